"""The console entry (`elastiscope`, `python -m agent`) exits with main()'s code, quietly."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv,code", [(["--version"], 0), (["run", "--nproc-per-node", "0", "x.py"], 2)])
def test_console_entry_exits_with_mains_code(argv, code):
    proc = subprocess.run([sys.executable, "-m", "agent", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == code
    assert "Traceback" not in proc.stderr


def test_a_reader_that_leaves_early_is_not_an_error():
    proc = subprocess.Popen([sys.executable, "-m", "agent", "--version"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert b"Traceback" not in err
