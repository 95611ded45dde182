"""Stall rules and stack reading, as plain data: the detector on a fake clock, the two stack
formats, where a rank is and who the suspects are, and the flags' bad input."""

import json
import os
import subprocess
import sys

import pytest

from agent.stack_reading import (COLLECTIVE, DATA_LOADING, EXITED, NOT_RESPONDING, USER_CODE,
                                 Location, locate, parse_faulthandler, parse_py_spy, suspects)
from agent.stalls import AUTO_FLOOR_S, AUTO_MIN_STEPS, StallDetector, StallPolicy
from elastiscope.progress_layout import DURATION_BOUNDS, F_EXITING


class Snap:
    """What the detector reads of a ProgressSnapshot."""

    def __init__(self, steps, last_end, buckets=None, saved_time=0.0, loaded_time=0.0, flags=0):
        self.steps, self.last_end, self.flags = steps, last_end, flags
        self.saved_time, self.loaded_time = saved_time, loaded_time
        self.buckets = tuple(buckets or [0] * (len(DURATION_BOUNDS) + 1))


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def detector(**policy):
    clock = Clock()
    d = StallDetector(StallPolicy(**policy), clock=clock)
    d.attempt_started([0, 1])
    return d, clock


def test_explicit_timeout_names_the_rank_once_and_its_resumption():
    d, clock = detector(timeout=5.0)
    d.observe(0, None, Snap(3, 1000.0), 1000.0)
    d.observe(1, None, Snap(3, 1001.0), 1001.0)
    assert d.deadline() == 1005.0
    assert d.check(1004.9, {0, 1}) == ([], [])
    assert d.check(1005.0, {0, 1}) == ([0, 1], [])  # rank 1 is due within a second: one hang
    assert d.check(1005.5, {0, 1}) == ([], [])  # told once
    assert d.stalls_total == 1
    d.observe(0, None, Snap(4, 1007.0), 1007.0)
    assert d.check(1007.1, {0, 1}) == ([], [0])


def test_ranks_that_stop_far_apart_are_two_findings_of_one_episode():
    d, _ = detector(timeout=5.0)
    d.observe(0, None, Snap(3, 1000.0), 1000.0)
    d.observe(1, None, Snap(3, 1003.0), 1003.0)
    assert d.check(1005.0, {0, 1}) == ([0], [])
    assert d.check(1008.0, {0, 1}) == ([1], [])
    assert d.stalls_total == 1  # one episode, grown by a rank


def test_a_worker_that_exited_is_not_stalled():
    d, _ = detector(timeout=5.0)
    d.observe(0, None, Snap(3, 1000.0), 1000.0)
    assert d.deadline({0, 1}) == 1005.0
    assert d.deadline(set()) is None  # the monitor does not wake for workers that are gone
    assert d.check(2000.0, set()) == ([], [])


def test_a_worker_whose_interpreter_is_exiting_is_not_stalled():
    """Its script is over: a slow exit (threads joined, stores closed) is not a hang."""
    d, _ = detector(timeout=5.0)
    d.observe(0, None, Snap(3, 1000.0, flags=F_EXITING), 1000.0)
    assert d.deadline({0}) is None and d.check(2000.0, {0}) == ([], [])


def test_a_worker_that_never_reports_is_never_stalled():
    d, _ = detector(timeout=5.0, first_step_timeout=10.0)
    assert d.deadline() is None
    assert d.check(10_000.0, {0, 1}) == ([], [])


def test_first_step_timeout_applies_once_a_peer_reports():
    d, clock = detector(timeout=5.0, first_step_timeout=30.0)
    d.observe(0, None, Snap(1, 1001.0), 1001.0)
    assert d.deadline() == 1006.0  # rank 0's own; rank 1's first step is due at 1030
    assert d.check(1029.0, {1}) == ([], [])
    assert d.check(1030.0, {1}) == ([1], [])


def test_checkpoints_count_as_progress():
    d, _ = detector(timeout=5.0)
    d.observe(0, None, Snap(3, 1000.0, saved_time=1004.0), 1004.0)
    assert d.check(1006.0, {0}) == ([], [])
    assert d.check(1009.0, {0}) == ([0], [])


def test_auto_waits_for_enough_steps_then_uses_the_floor_or_ten_p99():
    d, _ = detector()
    fast = [0] * (len(DURATION_BOUNDS) + 1)
    fast[DURATION_BOUNDS.index(0.1)] = AUTO_MIN_STEPS - 1
    d.observe(0, None, Snap(AUTO_MIN_STEPS, 1000.0, fast), 1000.0)
    assert d.timeout_for(0) is None  # not enough durations yet
    fast[DURATION_BOUNDS.index(0.1)] = 100
    d.observe(0, None, Snap(101, 1000.0, fast), 1000.0)
    assert d.timeout_for(0) == AUTO_FLOOR_S
    slow = [0] * (len(DURATION_BOUNDS) + 1)
    slow[DURATION_BOUNDS.index(30.0)] = 50
    d.observe(1, None, Snap(51, 1000.0, slow), 1000.0)
    assert d.timeout_for(1) == 300.0


def test_auto_ignores_pauses_of_three_medians():
    """An irregular job: steps of ~0.2 s with pauses of 0.6 s (3x the median) never come near
    the automatic timeout."""
    d, _ = detector()
    counts = [0] * (len(DURATION_BOUNDS) + 1)
    counts[DURATION_BOUNDS.index(0.25)] = 900
    counts[DURATION_BOUNDS.index(1.0)] = 100
    d.observe(0, None, Snap(1001, 1000.0, counts), 1000.0)
    assert d.timeout_for(0) >= 20 * 0.6


def test_off_finds_nothing():
    d, _ = detector(timeout=5.0, enabled=False)
    d.observe(0, None, Snap(3, 1000.0), 1000.0)
    assert d.deadline() is None and d.check(9999.0, {0}) == ([], [])


PY_SPY_RANK0 = """Process 17214: python -u /jobs/train.py
Python v3.11.7 (/usr/bin/python3.11)

Thread 17214 (idle): "MainThread"
    all_reduce (/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py:3252)
    _exception_logger.<locals>.wrapper (/venv/lib/python3.11/site-packages/torch/distributed/c10d_logger.py:83)
    main (/jobs/train.py:44)
    <module> (/jobs/train.py:57)
Thread 17230 (idle): "Thread-1"
    wait (/usr/lib/python3.11/threading.py:324)
"""

FAULTHANDLER_RANK1 = """Thread 0x00007f0000000002 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 324 in wait

Current thread 0x00007f0000000001 (most recent call first):
  File "/jobs/train.py", line 22 in sleep_forever
  File "/jobs/train.py", line 41 in main
  File "/jobs/train.py", line 57 in <module>
"""

DATA = """Thread 1 (idle): "MainThread"
    _next_data (/venv/lib/python3.11/site-packages/torch/utils/data/dataloader.py:1300)
    __next__ (/venv/lib/python3.11/site-packages/torch/utils/data/dataloader.py:700)
    main (/jobs/train.py:30)
"""


def test_py_spy_text_collective_with_the_calling_line():
    loc = locate(parse_py_spy(PY_SPY_RANK0))
    assert loc.where == COLLECTIVE and loc.detail == "all_reduce"
    assert loc.code.where() == "/jobs/train.py:44"
    assert "waiting in all_reduce called from /jobs/train.py:44" in loc.describe()


def test_faulthandler_text_main_thread_is_the_last_block():
    threads = parse_faulthandler(FAULTHANDLER_RANK1)
    assert [t.main for t in threads] == [False, True]
    loc = locate(threads)
    assert loc.where == USER_CODE and loc.code.where() == "/jobs/train.py:22"
    assert loc.code.function == "sleep_forever"


def test_data_loading():
    loc = locate(parse_py_spy(DATA))
    assert loc.where == DATA_LOADING and loc.code.where() == "/jobs/train.py:30"


def test_suspects_are_the_ranks_outside_the_collective_their_peers_wait_in():
    waiting = Location(COLLECTIVE, "all_reduce")
    assert suspects({0: waiting, 1: Location(USER_CODE), 2: waiting}) == [1]
    assert suspects({0: waiting, 1: Location(NOT_RESPONDING), 3: Location(EXITED)}) == [1]
    assert suspects({0: Location(USER_CODE), 1: Location(USER_CODE)}) == [0, 1]


@pytest.mark.parametrize("flags, says", [
    (["--stall-timeout", "soon"], "--stall-timeout"),
    (["--stall-timeout", "0"], "--stall-timeout"),
    (["--on-stall", "panic"], "--on-stall"),
    (["--first-step-timeout", "-1"], "--first-step-timeout"),
])
def test_bad_stall_flags_are_one_line(flags, says):
    proc = subprocess.run([sys.executable, "-m", "agent", "run", *flags, "x.py"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert says in proc.stderr and "Traceback" not in proc.stderr


def test_a_worker_marks_its_record_when_its_interpreter_exits(tmp_path):
    from elastiscope.progress_layout import CHANNEL_ENV, ProgressReader, create_record

    record = str(tmp_path / "record")
    create_record(record)
    code = "from elastiscope import progress; progress.step(); progress.step()"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, CHANNEL_ENV: record},
                   check=True, timeout=60)
    snap = ProgressReader(record).read()
    assert snap.steps == 2 and snap.flags & F_EXITING


def test_stacks_command_bad_input_is_one_line(tmp_path):
    log = tmp_path / "run.jsonl"
    log.write_text(json.dumps({"name": "elastiscope.agent.run_start", "source": "AGENT",
                               "timestamp": 1, "metadata": {"run_id": "r"}}) + "\n")
    for target, says in ((str(tmp_path / "missing.jsonl"), "not found"), (str(log), "no endpoint")):
        proc = subprocess.run([sys.executable, "-m", "agent", "stacks", target],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
