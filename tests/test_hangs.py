"""The hang of issue 14, for real: two workers over gloo, rank 1 sleeps forever in user code,
rank 0 waits in an all-reduce. ``--stall-timeout 5`` finds it, names rank 1 with the file and
line of its sleep and rank 0 as waiting in all_reduce, keeps both stacks in the event log and
in per-rank files, then applies ``--on-stall``: fail, restart (resumes from its checkpoint and
exits 0) or report (the job keeps running)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.polling import wait_until

pytestmark = pytest.mark.timeout(300)

SCRIPT = Path(__file__).resolve().parent / "faults" / "hang_in_user_code.py"
SLEEP_LINE = next(i for i, line in enumerate(SCRIPT.read_text().splitlines(), 1)
                  if "time.sleep(3600)" in line)
ALL_REDUCE_LINE = next(i for i, line in enumerate(SCRIPT.read_text().splitlines(), 1)
                       if "dist.all_reduce(p.grad)" in line)


def _command(tmp_path, policy, *extra):
    return [sys.executable, "-m", "agent", "run", "--standalone", "--nproc-per-node", "2",
            "--stall-timeout", "5", "--on-stall", policy, "--log-dir", str(tmp_path / "logs"),
            "--event-log", str(tmp_path / "events.jsonl"), *extra, str(SCRIPT)]


def _env(tmp_path):
    (tmp_path / "ckpt").mkdir(exist_ok=True)
    return {**os.environ, "CHECKPOINT_DIR": str(tmp_path / "ckpt"), "STEPS": "10", "HANG_AT_STEP": "2"}


def _events(tmp_path, name=None):
    path = tmp_path / "events.jsonl"
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if name is None or e["name"] == name]


def _check_stall_event(event):
    md = event["metadata"]
    assert json.loads(md["suspect_ranks"]) == [1], md["summary"]
    assert md["suspect_code"] == f"{SCRIPT}:{SLEEP_LINE}", md["summary"]
    ranks = json.loads(md["ranks"])
    assert ranks["1"]["where"] == "user_code" and ranks["1"]["function"] == "sleep_forever"
    assert ranks["0"]["where"] == "collective" and ranks["0"]["detail"] == "all_reduce"
    assert ranks["0"]["code"] == f"{SCRIPT}:{ALL_REDUCE_LINE}"
    stacks = json.loads(md["stacks"])
    assert f"{SCRIPT}:{SLEEP_LINE}" in stacks["1"] and "all_reduce" in stacks["0"]
    files = json.loads(md["stack_files"])
    assert "sleep_forever" in Path(files["1"]).read_text()
    assert "all_reduce" in Path(files["0"]).read_text()
    # Found at the first stalled rank's deadline (5 s after its last progress; the other rank,
    # due within a second, with it), bounded by a busy machine's wake-up.
    assert 4.99 <= md["found_time"] - md["last_progress_time"] < 15.0, md
    assert md["found_time"] - ranks["1"]["last_progress_time"] < 15.0, md
    return md


def test_on_stall_fail_names_rank_1_and_exits_non_zero(tmp_path):
    proc = subprocess.run(_command(tmp_path, "fail", "--metrics-port", "off"), env=_env(tmp_path), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "stalled: no progress" in proc.stderr and f"{SCRIPT}:{SLEEP_LINE}" in proc.stderr
    [stalled] = _events(tmp_path, "elastiscope.worker.stalled")
    assert _check_stall_event(stalled)["action"] == "fail"
    [end] = _events(tmp_path, "elastiscope.agent.run_end")
    assert end["metadata"]["state"] == "FAILED"
    assert not _events(tmp_path, "elastiscope.agent.restart")
    timeline = subprocess.run([sys.executable, "-m", "agent", "events", str(tmp_path / "events.jsonl")],
                              capture_output=True, text=True, timeout=60)
    assert "stalled" in timeline.stdout and f"{SCRIPT.name}:{SLEEP_LINE}" in timeline.stdout, timeline.stdout


@pytest.mark.slow
def test_on_stall_restart_resumes_from_the_checkpoint_and_exits_0(tmp_path):
    proc = subprocess.run(_command(tmp_path, "restart", "--max-restarts", "1", "--metrics-port", "off"),
                          env=_env(tmp_path),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed at step" in proc.stdout + proc.stderr
    [stalled] = _events(tmp_path, "elastiscope.worker.stalled")
    assert _check_stall_event(stalled)["action"] == "restart"
    [restart] = _events(tmp_path, "elastiscope.agent.restart")
    assert restart["metadata"]["reason"] == "stall"
    [end] = _events(tmp_path, "elastiscope.agent.run_end")
    assert end["metadata"]["state"] == "SUCCEEDED"


@pytest.mark.slow
def test_on_stall_report_keeps_the_job_running(tmp_path):
    proc = subprocess.Popen(_command(tmp_path, "report"), env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _events(tmp_path, "elastiscope.worker.stalled"), 180, "the stalled event")
        _check_stall_event(_events(tmp_path, "elastiscope.worker.stalled")[0])
        # On demand, through the endpoint the event log names: the same stacks, nobody stopped.
        stacks = subprocess.run([sys.executable, "-m", "agent", "stacks", str(tmp_path / "events.jsonl"), "--json"],
                                capture_output=True, text=True, timeout=120)
        assert stacks.returncode == 0, stacks.stderr
        dump = json.loads(stacks.stdout)
        assert dump["suspects"] == [1]
        assert {r["rank"]: r["where"] for r in dump["ranks"]} == {0: "collective", 1: "user_code"}
        time.sleep(2)  # not synchronisation: the job must still be running after a while
        assert proc.poll() is None
        assert not _events(tmp_path, "elastiscope.agent.restart")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


@pytest.mark.slow
def test_on_stall_fail_kills_a_worker_that_ignores_sigterm_after_the_grace(tmp_path):
    env = {**_env(tmp_path), "IGNORE_SIGTERM": "1"}
    proc = subprocess.run(_command(tmp_path, "fail", "--metrics-port", "off", "--shutdown-timeout", "2"),
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]
    [stalled] = _events(tmp_path, "elastiscope.worker.stalled")
    _check_stall_event(stalled)
    assert "exitcode  : -9" in proc.stderr and "stalled: no progress" in proc.stderr
