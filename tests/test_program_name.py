"""The `program` of the run-start event: what the workers run, without its arguments."""

from __future__ import annotations

import pytest

from agent.api import _program_name


def train():
    pass


@pytest.mark.parametrize(
    "entrypoint, args, expected",
    [
        ("/usr/bin/python3.11", ("-u", "examples/train_ddp.py", "--lr", "0.1"), "examples/train_ddp.py"),
        ("python", ("-u", "-m", "pkg.train", "--epochs", "3"), "-m pkg.train"),
        ("python3", ("-mpkg.train",), "-m pkg.train"),
        ("python3", ("-W", "ignore", "-X", "dev", "train.py", "-W"), "train.py"),
        ("python3", ("-c", "print(1)"), "-c"),
        ("python3", ("-u",), "python3"),
        ("/opt/bin/trainer", ("--secret", "s3cr3t"), "trainer"),
        (train, (), "train"),
    ],
)
def test_program_names_the_script_module_or_program_and_never_its_arguments(entrypoint, args, expected):
    assert _program_name(entrypoint, args) == expected
