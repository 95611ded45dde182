"""Reading a live worker's stack: py-spy, the faulthandler fallback, a stopped worker, a worker
that arranged nothing; each within the bounded capture time, none of them stopped or killed."""

import os
import signal
import subprocess
import sys
import time

import pytest

from agent.stack_reading import NOT_RESPONDING, USER_CODE
from agent.stacks import CAPTURE_TIMEOUT_S, StackTarget, capture_stacks, py_spy_binary
from elastiscope.stack_dump import STACK_FILE_ENV
from tests.helpers.polling import wait_until

pytestmark = pytest.mark.timeout(120)

WORKER = """
import os, sys, time
from elastiscope import stack_dump
armed = stack_dump.install()
def wait_here():
    open(sys.argv[1], "w").write(str(armed))
    while True:
        time.sleep(3600)  # WAIT LINE
wait_here()
"""
WAIT_LINE = WORKER.splitlines().index("        time.sleep(3600)  # WAIT LINE") + 1


@pytest.fixture
def worker(tmp_path):
    started = []

    def start(arm=True):
        ready = tmp_path / f"ready{len(started)}"
        dump = tmp_path / f"stacks{len(started)}"
        env = dict(os.environ)
        if arm:
            env[STACK_FILE_ENV] = str(dump)
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(ready)], env=env)
        started.append(proc)
        wait_until(ready.exists, 60, "the worker to start")
        return proc, StackTarget(proc.pid, str(dump))

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def _capture(targets, py_spy):
    t0 = time.monotonic()
    stacks = capture_stacks(targets, py_spy=py_spy)
    return stacks, time.monotonic() - t0


@pytest.mark.skipif(py_spy_binary() is None, reason="py-spy is not installed")
def test_py_spy_reads_the_line_the_worker_waits_on(worker):
    proc, target = worker()
    stacks, took = _capture({0: target}, "auto")
    stack = stacks[0]
    assert stack.method == "py-spy", stack.note
    assert stack.location.where == USER_CODE
    assert stack.location.code.line == WAIT_LINE and stack.location.code.function == "wait_here"
    assert proc.poll() is None


def test_faulthandler_dump_when_py_spy_cannot_read(worker, tmp_path):
    proc, target = worker()
    missing = str(tmp_path / "no-py-spy-here")
    stacks, took = _capture({0: target}, missing)
    stack = stacks[0]
    assert stack.method == "faulthandler", stack.note
    assert stack.location.code.line == WAIT_LINE
    assert proc.poll() is None  # asked twice, answered twice, still running
    again, _ = _capture({0: target}, missing)
    assert again[0].location.code.line == WAIT_LINE and proc.poll() is None
    assert took < 2 * CAPTURE_TIMEOUT_S + 5


def test_a_stopped_worker_is_not_responding_and_does_not_hold_the_agent(worker, tmp_path):
    proc, target = worker()
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] in "Tt",
                   30, "the worker to stop")
        for py_spy in ("auto", str(tmp_path / "none")):
            stacks, took = _capture({0: target}, py_spy)
            assert stacks[0].location.where == NOT_RESPONDING
            assert "stopped" in stacks[0].location.detail
            assert took < 2 * CAPTURE_TIMEOUT_S + 5
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def test_a_worker_without_the_dump_is_never_sent_the_signal(worker, tmp_path):
    proc, target = worker(arm=False)
    stacks, _ = _capture({0: target}, str(tmp_path / "none"))
    assert stacks[0].location.where == NOT_RESPONDING
    assert "no stack dump registered" in stacks[0].note
    assert proc.poll() is None  # SIGUSR2's default action would have ended it
