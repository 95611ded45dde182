"""Goodput under ``elastiscope run``, end to end: the crash-once example (examples/train_ddp.py,
rank 1 raising once) under the real agent, its workers stamping their own clock
(tests/workers/stamped_train_ddp.py). The buckets add up to the wall time within 1 %, and the
restart's badput spans the crash to the first step after it, as the workers saw them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from test_progress_run import WatchedRun

pytestmark = pytest.mark.timeout(300)

WORKER = Path(__file__).resolve().parent / "workers" / "stamped_train_ddp.py"
REASONS = ("startup", "rendezvous", "restart", "stall", "lost_progress", "shutdown")
# The agent takes the crash from the error file's time and the first step from the worker's
# progress record; the worker stamps both moments itself, a few statements apart. Generous: a
# busy machine may preempt a worker between the two.
STAMP_TOLERANCE_S = 0.5


def _stamps(directory: Path) -> dict[str, dict[str, list[float]]]:
    """{"<attempt>.<rank>": {"first_step": [...], "crash": [...]}}"""
    out = {}
    for path in directory.iterdir():
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.name] = {k: [d[k] for d in lines if k in d] for k in ("first_step", "crash")}
    return out


@pytest.fixture(scope="module")
def crash_once(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("goodput")
    (tmp / "stamps").mkdir()
    run = WatchedRun([
        "--nproc-per-node", "2", "--max-restarts", "1", "--event-log", str(tmp / "events.jsonl"),
        str(WORKER), str(tmp / "stamps"), "--steps", "60", "--crash-once-rank", "1",
        "--crash-at-step", "47", "--checkpoint-every", "20", "--step-delay", "0.005",
        "--checkpoint-dir", str(tmp / "ck"),
    ], cwd=tmp).watch()
    assert run.proc.returncode == 0, "".join(run.err[-30:])
    events = [json.loads(line) for line in (tmp / "events.jsonl").read_text().splitlines()]
    return run, events, _stamps(tmp / "stamps"), tmp / "events.jsonl"


def _one(events, name):
    (event,) = [e for e in events if e["name"] == name]
    return event


def test_the_buckets_add_up_to_the_wall_time_within_one_percent(crash_once):
    run, events, _, _ = crash_once
    start, end = _one(events, "elastiscope.agent.run_start"), _one(events, "elastiscope.agent.run_end")
    md = end["metadata"]
    wall = (end["timestamp"] - start["timestamp"]) / 1000  # the run as its own events bracket it
    buckets = md["productive_seconds"] + sum(md[f"badput_{r}_seconds"] for r in REASONS)
    assert buckets == pytest.approx(wall, rel=0.01)
    assert md["wall_seconds"] == pytest.approx(wall, rel=0.01)
    assert md["progress_reported"] is True and 0 < md["goodput_ratio"] < 1
    # /metrics (the scrape after the run's end) says the same.
    productive = run.samples("elastiscope_productive_seconds_total")
    badput = {dict(k)["reason"]: v for k, v in run.samples("elastiscope_badput_seconds_total").items()}
    assert set(badput) == set(REASONS)
    assert sum(productive.values()) + sum(badput.values()) == pytest.approx(wall, rel=0.01)
    (ratio,) = run.samples("elastiscope_goodput_ratio").values()
    assert ratio == pytest.approx(md["goodput_ratio"], abs=1e-3)
    # Attempts split the run too; the resumed one redid the steps after the step-40 checkpoint.
    attempts = [e["metadata"] for e in events if e["name"] == "elastiscope.agent.attempt_goodput"]
    assert [a["attempt"] for a in attempts] == [0, 1]
    assert sum(a["wall_seconds"] for a in attempts) == pytest.approx(md["wall_seconds"], abs=0.01)
    assert [a["ended_by"] for a in attempts] == ["failure", "run_end"]
    assert [a["steps"] for a in attempts] == [46, 20] and attempts[1]["redone_steps"] == 6
    assert attempts[1]["badput_lost_progress_seconds"] > 0


def test_restart_badput_spans_the_crash_to_the_first_step_after_it(crash_once):
    _, events, stamps, _ = crash_once
    crash = min(t for name, s in stamps.items() if name.startswith("0.") for t in s["crash"])
    resumed = min(s["first_step"][0] for name, s in stamps.items() if name.startswith("1."))
    first_steps = [e["metadata"] for e in events if e["name"] == "elastiscope.agent.first_step"]
    assert [f["attempt"] for f in first_steps] == [0, 1]
    after = first_steps[1]
    assert after["interruption_reason"] == "failure"
    assert math.isclose(after["first_step_time"], resumed, abs_tol=STAMP_TOLERANCE_S)
    assert math.isclose(after["interruption_to_first_step_s"], resumed - crash, abs_tol=STAMP_TOLERANCE_S)
    restart = _one(events, "elastiscope.agent.run_end")["metadata"]["badput_restart_seconds"]
    assert math.isclose(restart, resumed - crash, abs_tol=STAMP_TOLERANCE_S)
    started = min(s["first_step"][0] for name, s in stamps.items() if name.startswith("0."))
    assert math.isclose(first_steps[0]["first_step_time"], started, abs_tol=STAMP_TOLERANCE_S)


def test_the_timeline_shows_each_attempt_and_the_first_step_after_the_restart(crash_once):
    _, _, _, log = crash_once
    out = subprocess.run([sys.executable, "-m", "agent", "events", str(log)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "attempt 1: first training step after the restart after " in text, text
    assert "attempt 0 (ended by failure): 46 steps, " in text and " steps/s; " in text, text
    assert "(6 steps redone)" in text, text
    assert "run ended: SUCCEEDED after " in text and "; goodput " in text, text
