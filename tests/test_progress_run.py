"""Progress under ``elastiscope run``, end to end: real agents, real DDP over gloo, the real
endpoint. /metrics must show every rank's optimizer steps exactly, the global step right after a
crash and resume, and a worker that never steps as not reporting (never as stalled)."""

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
URL = re.compile(r"metrics (http://[^\s\"]+)/metrics")


class WatchedRun:
    """``elastiscope run ARGS``, scraped every 0.2 s until its endpoint goes away: ``metrics``
    is the last scrape (after the run ended: the endpoint lingers for it), ``statuses`` every
    /status seen."""

    def __init__(self, args, cwd):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--metrics-port", "0", "--event-log", "off", *args],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.base = None
        self.err: list[str] = []
        self.out: list[str] = []
        self.metrics = ""
        self.statuses: list[dict] = []
        threading.Thread(target=self._read_stderr, daemon=True).start()
        threading.Thread(target=lambda: self.out.extend(self.proc.stdout), daemon=True).start()

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.err.append(line)
            m = URL.search(line)
            if m and self.base is None:
                self.base = m.group(1)

    def watch(self, timeout=200, on_status=None):
        """Scrape until the run ends; ``on_status`` (optional) is called with every /status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.base:
                try:
                    self.metrics = urllib.request.urlopen(self.base + "/metrics", timeout=5).read().decode()
                    self.statuses.append(json.loads(urllib.request.urlopen(self.base + "/status", timeout=5).read()))
                    if on_status is not None:
                        on_status(self.statuses[-1])
                except OSError:
                    if self.proc.poll() is not None:
                        break
            elif self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return self

    def samples(self, name):
        """{labels as a sorted tuple of (key, value): value} of one sample name."""
        out = {}
        for family in text_string_to_metric_families(self.metrics):
            for s in family.samples:
                if s.name == name:
                    out[tuple(sorted(s.labels.items()))] = s.value
        return out

    def per_rank(self, name):
        return {dict(k)["local_rank"]: v for k, v in self.samples(name).items()}


def run_watched(tmp_path, *args):
    run = WatchedRun(list(args), cwd=tmp_path).watch()
    assert run.proc.returncode == 0, "".join(run.err[-30:])
    return run


def test_every_ranks_step_count_is_the_scripts_own_count_of_optimizer_steps(tmp_path):
    run = run_watched(tmp_path, "--nproc-per-node", "2", str(EXAMPLES / "train_ddp.py"),
                      "--steps", "57", "--checkpoint-dir", "", "--step-delay", "0.005")
    assert run.per_rank("elastiscope_worker_steps_total") == {"0": 57, "1": 57}
    assert run.per_rank("elastiscope_worker_global_step") == {"0": 57, "1": 57}
    assert run.per_rank("elastiscope_worker_reporting_progress") == {"0": 1, "1": 1}
    assert run.per_rank("elastiscope_worker_step_duration_seconds_count") == {"0": 56, "1": 56}
    last = run.per_rank("elastiscope_worker_last_step_timestamp_seconds")
    assert all(abs(v - time.time()) < 120 for v in last.values())
    assert run.samples("elastiscope_node_steps_per_second")


def test_the_global_step_is_right_after_a_crash_and_resume(tmp_path):
    # Rank 1 raises at step 47 of the first attempt; rank 0 waits in that step's all-reduce, so
    # both made 46 steps. The restart resumes from the checkpoint of step 40 and runs to 100.
    run = run_watched(tmp_path, "--nproc-per-node", "2", "--max-restarts", "1",
                      str(EXAMPLES / "train_ddp.py"), "--steps", "100", "--checkpoint-dir",
                      str(tmp_path / "ck"), "--checkpoint-every", "20", "--step-delay", "0.005",
                      "--crash-once-rank", "1", "--crash-at-step", "47")
    assert "".join(run.out).count("resuming at step 40") == 1
    assert run.per_rank("elastiscope_worker_global_step") == {"0": 100, "1": 100}
    assert run.per_rank("elastiscope_worker_steps_total") == {"0": 46 + 60, "1": 46 + 60}
    # Seen while the resumed attempt ran: a global step past 40 that steps alone (60 at most
    # in that attempt) could not explain unless the count continued from the checkpoint.
    resumed = [w["progress"]["global_step"] for s in run.statuses if s["restarts_used"] == 1
               for w in s["workers"] if (w.get("progress") or {}).get("reporting")]
    assert resumed and min(resumed) > 40


def test_a_worker_that_never_steps_shows_as_not_reporting(tmp_path):
    # The workers sleep until this test has seen them running on /status (on a busy machine
    # the endpoint can come up after a fixed sleep is over, and then nothing was scraped).
    go = tmp_path / "go"
    script = tmp_path / "sleeper.py"
    script.write_text("import os, sys, time\n"
                      "deadline = time.monotonic() + 120\n"
                      f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
                      "    time.sleep(0.05)\n"
                      "print('torch' in sys.modules)\n")

    def release_when_running(status):
        if sum(1 for w in status["workers"] if w.get("pid")) == 2:
            go.touch()

    run = WatchedRun(["--nproc-per-node", "2", "--tee", "3", str(script)], cwd=tmp_path).watch(
        on_status=release_when_running)
    assert run.proc.returncode == 0, "".join(run.err[-30:])
    assert run.per_rank("elastiscope_worker_reporting_progress") == {"0": 0, "1": 0}
    assert run.per_rank("elastiscope_worker_steps_total") == {}
    # Goodput claims nothing for it: no ratio, and the summary line says why (agent/goodput.py).
    assert run.samples("elastiscope_goodput_ratio") == {}
    assert "goodput: no progress reported" in "".join(run.err)
    # Once the run is over the records are closed and /status says no progress at all (None).
    seen = [w["progress"] for s in run.statuses for w in s["workers"]
            if w.get("pid") and w.get("progress") is not None]
    assert seen and all(p == {"reporting": False, "steps": None, "global_step": None,
                              "last_step_time": None, "last_step_duration": None} for p in seen)


def test_no_progress_turns_the_optimizer_hook_off(tmp_path):
    run = run_watched(tmp_path, "--nproc-per-node", "1", "--no-progress", str(EXAMPLES / "train_ddp.py"),
                      "--steps", "10", "--checkpoint-dir", "")
    assert run.per_rank("elastiscope_worker_reporting_progress") == {"0": 0}


def test_the_explicit_example_reports_its_global_step_checkpoints_and_scalars(tmp_path):
    run = run_watched(tmp_path, "--nproc-per-node", "2", "--max-restarts", "1",
                      str(EXAMPLES / "train_explicit.py"), "--steps", "50", "--checkpoint-dir",
                      str(tmp_path / "ck"), "--crash-once-rank", "0", "--crash-at-step", "33")
    assert run.per_rank("elastiscope_worker_global_step") == {"0": 50, "1": 50}
    assert run.per_rank("elastiscope_worker_steps_total") == {"0": 32 + 30, "1": 32 + 30}
    checkpoints = {(dict(k)["local_rank"], dict(k)["kind"]): v
                   for k, v in run.samples("elastiscope_worker_checkpoint_step").items()}
    assert checkpoints[("0", "saved")] == 40 and checkpoints[("0", "loaded")] == 20
    names = {dict(k)["name"] for k in run.samples("elastiscope_worker_progress_scalar")}
    assert names == {"loss", "samples_per_second"}


def test_train_ddp_makes_no_call_of_ours():
    source = (EXAMPLES / "train_ddp.py").read_text()
    assert "elastiscope" not in source.split('"""', 2)[2]
