"""The fast failure exit (elastiscope/failure_exit.py), in real interpreters started as a worker
is: with our sitecustomize first on PYTHONPATH."""

import os
import subprocess
import sys

import pytest

from agent.progress import SITE_DIR

# A module-level object whose __del__ runs only during the interpreter's module teardown.
SCRIPT = """
import atexit, sys
class Teardown:
    def __del__(self):
        sys.stdout.write("torn down\\n")
        sys.stdout.flush()
keep = Teardown()
atexit.register(lambda: print("atexit ran", flush=True))
log = open(sys.argv[1], "w")
log.write("written, never flushed")
how = sys.argv[2]
if how == "raise":
    raise RuntimeError("boom")
if how == "exit3":
    sys.exit(3)
"""


def _run(tmp_path, how, **env):
    script = tmp_path / "w.py"
    script.write_text(SCRIPT)
    out = tmp_path / "log.txt"
    path = os.pathsep.join([SITE_DIR, os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(script), str(out), how], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": path, **env})
    return proc, out.read_text()


def test_an_uncaught_exception_exits_1_after_atexit_without_the_teardown(tmp_path):
    proc, written = _run(tmp_path, "raise")
    assert proc.returncode == 1
    assert "RuntimeError: boom" in proc.stderr
    assert "atexit ran" in proc.stdout and "torn down" not in proc.stdout
    assert written == "written, never flushed"  # open files are flushed all the same


@pytest.mark.parametrize("how, code", [("exit3", 3), ("end", 0)])
def test_other_exits_keep_the_full_finalisation(tmp_path, how, code):
    proc, written = _run(tmp_path, how)
    assert proc.returncode == code
    assert "torn down" in proc.stdout and written == "written, never flushed"


def test_the_switch_keeps_the_full_finalisation(tmp_path):
    proc, _ = _run(tmp_path, "raise", ELASTISCOPE_FAST_FAILURE_EXIT="0")
    assert proc.returncode == 1 and "torn down" in proc.stdout
