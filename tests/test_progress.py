"""The progress channel's two sides, for real: the record's writer and reader across processes,
the optimizer-step hook a worker's sitecustomize installs (only once the script imports torch),
its chaining to another sitecustomize, and the explicit API (a no-op outside an agent)."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.progress import SITE_DIR, ProgressChannels
from agent.worker_env import progress_env
from elastiscope import progress_layout as layout
from elastiscope.progress_hook import STEP_KEY
from telemetry.prometheus.catalogue import TRAINING_STEP_BUCKETS

pytestmark = pytest.mark.timeout(120)


def run_worker(code, record, tmp_path, extra_env=None, site=SITE_DIR):
    """``code`` as a worker started with the environment our agent gives it."""
    script = tmp_path / "worker.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", layout.AUTO_STEPS_ENV)}
    env.update(progress_env(str(record), site))
    env.update(extra_env or {})
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=100)
    assert done.returncode == 0, done.stderr
    return done.stdout


OPTIMIZER_LOOP = """
import sys
torch_before = "torch" in sys.modules
import torch
model = torch.nn.Linear(3, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range({steps}):
    opt.zero_grad()
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
print(torch_before, sys.path.count({site!r}))
"""


def test_layout_bounds_are_the_histograms_bounds():
    assert layout.DURATION_BOUNDS == TRAINING_STEP_BUCKETS
    assert layout.S_END * 8 <= layout.SIZE


def test_a_fresh_record_reads_as_not_reporting(tmp_path):
    layout.create_record(str(tmp_path / "r"))
    assert layout.ProgressReader(str(tmp_path / "r")).read() is None


def test_every_optimizer_step_is_counted_without_a_change_to_the_script(tmp_path):
    record = tmp_path / "r"
    layout.create_record(str(record))
    out = run_worker(OPTIMIZER_LOOP.format(steps=23, site=SITE_DIR), record, tmp_path)
    # torch was not loaded before the script imported it; our directory left sys.path.
    assert out.split() == ["False", "0"]
    snap = layout.ProgressReader(str(record)).read()
    assert snap.steps == 23 and snap.global_step == 23
    assert sum(snap.buckets) == 22  # one duration per step after the first
    assert snap.duration_sum > 0 and snap.last_end > snap.first_end > 0


def test_opting_out_leaves_the_optimizer_alone(tmp_path):
    record = tmp_path / "r"
    layout.create_record(str(record))
    run_worker(OPTIMIZER_LOOP.format(steps=3, site=SITE_DIR), record, tmp_path,
               extra_env={layout.AUTO_STEPS_ENV: "0"})
    assert layout.ProgressReader(str(record)).read() is None
    layout.create_record(str(record))
    run_worker(OPTIMIZER_LOOP.format(steps=3, site=SITE_DIR), record, tmp_path, site=None)
    assert layout.ProgressReader(str(record)).read() is None


def test_a_script_that_never_imports_torch_never_loads_it(tmp_path):
    record = tmp_path / "r"
    layout.create_record(str(record))
    script = tmp_path / "plain.py"
    script.write_text("import time\n")
    env = {**os.environ, **progress_env(str(record), SITE_DIR)}
    done = subprocess.run([sys.executable, "-X", "importtime", str(script)], env=env,
                          capture_output=True, text=True, timeout=60)
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    assert "elastiscope.progress_hook" in imported  # the hook is there...
    assert not [m for m in imported if m.split(".")[0] == "torch"]  # ...and torch is not
    assert layout.ProgressReader(str(record)).read() is None


def test_our_sitecustomize_runs_the_one_it_shadows(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import os\nos.environ['THEIRS_RAN'] = '1'\n")
    record = tmp_path / "r"
    layout.create_record(str(record))
    code = OPTIMIZER_LOOP.format(steps=2, site=SITE_DIR) + "import os; print(os.environ.get('THEIRS_RAN'))\n"
    script = tmp_path / "w.py"
    script.write_text(code)
    env = {**os.environ, **progress_env(str(record), SITE_DIR)}
    env["PYTHONPATH"] = f"{SITE_DIR}{os.pathsep}{theirs}"
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=100)
    assert done.stdout.split()[-1] == "1", done.stderr
    assert layout.ProgressReader(str(record)).read().steps == 2


def test_the_global_step_survives_a_checkpoint_of_the_optimizer(tmp_path):
    record = tmp_path / "r"
    layout.create_record(str(record))
    save = OPTIMIZER_LOOP.format(steps=5, site=SITE_DIR) + f"torch.save(opt.state_dict(), {str(tmp_path / 'ck')!r})\n"
    run_worker(save, record, tmp_path)
    layout.create_record(str(record))  # the next attempt's record
    resume = OPTIMIZER_LOOP.format(steps=0, site=SITE_DIR) + (
        f"opt.load_state_dict(torch.load({str(tmp_path / 'ck')!r}))\n"
        "for _ in range(3):\n    model(torch.ones(2, 3)).sum().backward(); opt.step()\n"
        f"print(opt.param_groups[0][{STEP_KEY!r}])\n")
    assert run_worker(resume, record, tmp_path).split()[-1] == "8"
    snap = layout.ProgressReader(str(record)).read()
    assert (snap.steps, snap.global_step) == (3, 8)


EXPLICIT = """
import sys
from elastiscope import progress
progress.set_global_step(100)
progress.checkpoint_loaded(100)
for i in range(4):
    progress.step()
progress.scalar("loss", 0.5)
progress.scalar("tokens_per_second", 1234.0)
for bad in ("Loss", "x" * 32, "a-b", "e", "f", "g"):
    progress.scalar(bad, 1.0)
progress.checkpoint_saved(104)
print(progress.enabled(), "torch" in sys.modules, "agent" in sys.modules)
"""


def test_the_explicit_api_reports_steps_global_step_checkpoints_and_bounded_scalars(tmp_path):
    record = tmp_path / "r"
    layout.create_record(str(record))
    assert run_worker(EXPLICIT, record, tmp_path).split() == ["True", "False", "False"]
    snap = layout.ProgressReader(str(record)).read()
    assert (snap.steps, snap.global_step, snap.loaded_step, snap.saved_step) == (4, 104, 100, 104)
    assert snap.flags & layout.F_EXPLICIT_STEPS
    # Two valid names, then only two more slots: "e" and "f" take them, "g" is refused.
    assert snap.scalars == {"loss": 0.5, "tokens_per_second": 1234.0, "e": 1.0, "f": 1.0}


def test_the_explicit_api_is_a_no_op_outside_an_agent(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != layout.CHANNEL_ENV}
    script = tmp_path / "w.py"
    script.write_text(EXPLICIT)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["False", "False", "False"], done.stderr


def test_reads_are_never_torn_while_the_worker_writes(tmp_path):
    """A reader racing a writer only ever sees whole records: steps and the global step are
    written together, so they always agree."""
    record = tmp_path / "r"
    layout.create_record(str(record))
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys; from elastiscope.progress_layout import ProgressWriter\n"
        f"w = ProgressWriter({str(record)!r}); w.set_global_step(1000)\n"
        "for _ in range(300000): w.step()\n")])
    reader = layout.ProgressReader(str(record))
    seen = 0
    try:
        while writer.poll() is None:
            snap = reader.read()
            if snap is not None and snap.steps:
                assert snap.global_step == 1000 + snap.steps
                seen += 1
    finally:
        writer.wait(60)
    assert writer.returncode == 0 and seen > 0
    assert reader.read().steps == 300000


class _Recorder:
    def __init__(self):
        self.calls = []

    def attempt_started(self, ranks):
        self.calls.append(("started", tuple(ranks)))

    def attempt_ended(self, last):
        self.calls.append(("ended", {r: (s.steps if s else None) for r, s in last.items()}))

    def observe(self, rank, previous, current, now):
        self.calls.append(("observe", rank, current.steps))

    def polled(self, now):
        pass


def test_channels_give_each_attempt_fresh_records_and_tell_observers(tmp_path):
    recorder = _Recorder()
    channels = ProgressChannels([recorder])
    paths = channels.begin_attempt(0, [0, 1])
    writer = layout.ProgressWriter(paths[0])
    writer.step(), writer.step()
    channels.poll()
    assert channels.status() == {0: {"reporting": True, "steps": 2, "global_step": None,
                                     "last_step_time": writer_time(paths[0]),
                                     "last_step_duration": channels.status()[0]["last_step_duration"]},
                                 1: {"reporting": False}}
    writer.step()
    again = channels.begin_attempt(1, [0, 1])
    assert set(again.values()).isdisjoint(paths.values())
    channels.close()
    assert ("ended", {0: 3, 1: None}) in recorder.calls
    assert [c for c in recorder.calls if c[0] == "observe"] == [("observe", 0, 2), ("observe", 0, 3)]
    assert not Path(paths[0]).parent.exists()


def writer_time(path):
    return layout.ProgressReader(path).read().last_end


# ---- every kind of Python worker gets the hook, through the local agent ---------------------

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs  # noqa: E402

from agent.api import WorkerState  # noqa: E402
from agent.local import LocalElasticAgent  # noqa: E402
from helpers.local_agent import TESTS, capture_pipeline, script_spec, static_spec  # noqa: E402
from telemetry.state import set_pipeline  # noqa: E402
from workers import optimizer_steps  # noqa: E402


@pytest.fixture
def metrics():
    pipeline, _, captured = capture_pipeline()
    previous = set_pipeline(pipeline)
    yield captured
    set_pipeline(previous)


def steps_seen(metrics, nproc):
    return [max(metrics.values(f"workers.trainer.worker.{r}.progress.steps"), default=None)
            for r in range(nproc)]


def test_script_workers_cold_and_from_a_standby_count_their_steps(metrics, tmp_path):
    spec = script_spec("optimizer_steps.py", 7, "--fail-first-attempt", nproc=2, max_restarts=1)
    agent = LocalElasticAgent(spec, DefaultLogsSpecs(log_dir=str(tmp_path)))
    taken = []
    fill = agent._fill_standbys

    def fill_and_remember():
        fill()
        taken.extend(agent._standbys.pids)

    agent._fill_standbys = fill_and_remember
    assert agent.run().state == WorkerState.SUCCEEDED
    assert taken, "the restart was to come from standbys"
    assert steps_seen(metrics, 2) == [14, 14]  # 7 cold, then 7 from the standby


def test_module_workers_count_their_steps(metrics, tmp_path, monkeypatch):
    monkeypatch.chdir(TESTS)
    spec = static_spec(sys.executable, ("-m", "workers.optimizer_steps", "5"), nproc=1)
    assert LocalElasticAgent(spec, DefaultLogsSpecs(log_dir=str(tmp_path))).run().state == WorkerState.SUCCEEDED
    assert steps_seen(metrics, 1) == [5]


def test_callable_workers_count_their_steps(metrics, tmp_path):
    spec = static_spec(optimizer_steps.steps, args=(6,), nproc=2)
    result = LocalElasticAgent(spec, DefaultLogsSpecs(log_dir=str(tmp_path))).run()
    assert result.state == WorkerState.SUCCEEDED and result.return_values == {0: 6, 1: 6}
    assert steps_seen(metrics, 2) == [6, 6]


def test_without_counting_optimizer_steps_no_worker_reports(metrics, tmp_path):
    spec = script_spec("optimizer_steps.py", 3, nproc=1)
    agent = LocalElasticAgent(spec, DefaultLogsSpecs(log_dir=str(tmp_path)), count_optimizer_steps=False)
    assert agent.run().state == WorkerState.SUCCEEDED
    assert steps_seen(metrics, 1) == [None]
    assert metrics.values("workers.trainer.worker.0.progress.reporting") == [0]
