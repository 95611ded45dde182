"""The `program` of the run-start event: what the workers run, without its arguments; and the
one reader of python command lines (agent.python_cmdline) it and warm standbys share."""

from __future__ import annotations

import pytest

from agent.python_cmdline import parse_python_args
from agent.run_events import program_name


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
        # Options run together as the interpreter reads them: never the code, nor "mod" alone.
        ("python3", ("-uc", "print('s3cr3t')"), "-c"),
        ("python3", ("-um", "pkg.train"), "-m pkg.train"),
        ("python3", ("--check-hash-based-pycs", "always", "train.py"), "train.py"),
        ("python3", ("--", "-odd-name.py"), "-odd-name.py"),
    ],
)
def test_program_names_the_script_module_or_program_and_never_its_arguments(entrypoint, args, expected):
    assert program_name(entrypoint, args) == expected


@pytest.mark.parametrize(
    "args, options, program, rest, only_tunes",
    [
        (("-u", "-X", "dev", "train.py", "--lr", "1"), ("-u", "-X", "dev"), ("train.py", None, None),
         ("--lr", "1"), True),
        (("-uWignore", "-B", "-m", "pkg", "x"), ("-uWignore", "-B"), (None, "pkg", None), ("x",), True),
        (("-Bm", "pkg"), ("-B",), (None, "pkg", None), (), True),
        (("-c", "print(1)", "a"), (), (None, None, "print(1)"), ("a",), True),
        (("-i", "train.py"), ("-i",), ("train.py", None, None), (), False),
        (("-x", "train.py"), ("-x",), ("train.py", None, None), (), False),
        (("-", "a"), (), ("-", None, None), ("a",), True),
        (("--", "-odd.py"), ("--",), ("-odd.py", None, None), (), False),
        (("-V",), ("-V",), (None, None, None), (), False),
    ],
)
def test_python_command_lines_are_taken_apart_as_the_interpreter_reads_them(args, options, program, rest, only_tunes):
    command = parse_python_args(args)
    assert command.options == options
    assert (command.script, command.module, command.command) == program
    assert command.args == rest
    assert command.only_tunes is only_tunes
