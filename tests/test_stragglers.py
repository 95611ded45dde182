"""Stragglers, for real: a DDP job over gloo with four workers, one of which does three times the
forward work, under ``elastiscope run``; the worker side's DDP forward timing in a real process;
the detector's rules on known forward times; the flags."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.cli.arguments import build_run_parser
from agent.cli.errors import UsageError
from agent.stragglers import DEFAULT_STEPS, DEFAULT_THRESHOLD, StragglerDetector
from elastiscope import progress_layout as layout
from telemetry import names
from test_cli_errors import assert_usage_error, elastiscope
from test_progress import run_worker

pytestmark = pytest.mark.timeout(240)

TESTS = Path(__file__).resolve().parent
STRAGGLER_WORKER = TESTS / "workers" / "ddp_straggler.py"
SLOW_RANK, SLOW_STEPS, STEPS = 2, 25, 45


def straggler_events(log: Path) -> list[dict]:
    kinds = (names.WORKER_STRAGGLER, names.WORKER_STRAGGLER_RECOVERED)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return [e for e in events if e["name"] in kinds]


def test_a_rank_with_three_times_the_forward_work_is_flagged_within_20_steps_and_cleared(tmp_path):
    # Four workers on a (busy) two-core machine; rank 2's forward does three times the work for
    # its first 25 steps, then the same as the others until step 45. With more runnable threads
    # than cores one rank can lose the scheduler's lottery for many steps: the detector weighs
    # forward times by each rank's running share, so only the rank with more work is flagged. The forwards are tens of
    # milliseconds, so that scheduler noise does not decide, and a step is long enough that a
    # read of the records (once a second) covers only a few steps.
    log = tmp_path / "events.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--nproc-per-node", "4", "--metrics-port", "off",
         "--event-log", str(log), str(STRAGGLER_WORKER), "--slow-rank", str(SLOW_RANK),
         "--factor", "3", "--slow-steps", str(SLOW_STEPS), "--steps", str(STEPS), "--width", "1024"],
        cwd=tmp_path, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    events = straggler_events(log)
    described = [(e["name"], e["metadata"]["local_rank"], e["metadata"]["steps"]) for e in events]
    assert [(name, rank) for name, rank, _ in described] == [
        (names.WORKER_STRAGGLER, SLOW_RANK), (names.WORKER_STRAGGLER_RECOVERED, SLOW_RANK)], described
    flagged, recovered = events
    assert flagged["source"] == "WORKER"
    assert flagged["metadata"]["steps"] <= 20, described
    assert recovered["metadata"]["steps"] > SLOW_STEPS, described
    meta = flagged["metadata"]
    assert meta["global_rank"] == SLOW_RANK and meta["role"] == "default"
    assert meta["ratio"] > DEFAULT_THRESHOLD and meta["threshold"] == DEFAULT_THRESHOLD
    assert meta["weighed_forward_seconds"] == pytest.approx(meta["ratio"] * meta["peer_median_seconds"], rel=0.01)
    assert meta["forward_seconds"] >= meta["weighed_forward_seconds"] * 0.99
    assert meta["window_steps"] == DEFAULT_STEPS
    assert recovered["metadata"]["ratio"] <= DEFAULT_THRESHOLD


DDP_LOOP = """
import gc, sys, time
torch_before = "torch" in sys.modules
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
model = DistributedDataParallel(torch.nn.Linear(8, 8))
opt = torch.optim.SGD(model.parameters(), lr=0.1)

def train_step():
    opt.zero_grad()
    model(torch.ones(2, 8)).sum().backward()
    opt.step()

train_step()
train_step()
start = time.perf_counter()
with torch.no_grad():
    for _ in range(5000):
        model(torch.ones(2, 8))  # evaluation: no training step's forward
evaluation = time.perf_counter() - start
train_step()
del model  # DDP goes before the process group: see examples/train_ddp.py (a torch 2.13 hang at exit)
gc.collect()
dist.destroy_process_group()
print(torch_before, hasattr(DistributedDataParallel._run_ddp_forward, "__wrapped__"), evaluation)
"""


def free_port() -> int:
    from torch.distributed.elastic.utils.distributed import get_free_port

    return get_free_port()


def test_ddp_forwards_are_timed_per_step_without_a_change_to_the_script(tmp_path):
    record = tmp_path / "record"
    layout.create_record(str(record))
    torch_before, timed, evaluation = run_worker(DDP_LOOP.format(port=free_port()), record, tmp_path).split()
    assert (torch_before, timed) == ("False", "True")  # torch loaded by the script, not by us
    snap = layout.ProgressReader(str(record)).read()
    assert snap.steps == 3 and snap.forward_steps == 3
    assert 0 < snap.forward_last < snap.forward_sum
    # The last step's forward time is its one forward, not the 5000 evaluation forwards before it.
    assert snap.forward_last < float(evaluation) / 3


def test_forward_timing_can_be_turned_off(tmp_path):
    record = tmp_path / "record"
    layout.create_record(str(record))
    code = ("import torch.nn.parallel.distributed as ddp\n"
            "print(hasattr(ddp.DistributedDataParallel._run_ddp_forward, '__wrapped__'))\n")
    off = run_worker(code, record, tmp_path, extra_env={"ELASTISCOPE_FORWARD_TIMING": "0"})
    assert off.split() == ["False"]  # (timed when on: the test above)


def test_the_forward_slots_fit_the_record():
    assert layout.S_USED * 8 <= layout.SIZE
    assert min(layout.S_FORWARD_LAST, layout.S_FORWARD_SUM, layout.S_FORWARD_STEPS) >= layout.S_END


class Records:
    """Each worker's record as the detector reads it: steps and forward sums, advanced by hand."""

    def __init__(self, detector: StragglerDetector, ranks: int) -> None:
        self.detector = detector
        self.last: dict[int, SimpleNamespace | None] = {rank: None for rank in range(ranks)}
        detector.attempt_started(list(range(ranks)))

    def poll(self, steps: int, forward: dict[int, float], default: float = 0.02) -> None:
        """Every worker made ``steps`` steps, each with ``forward[rank]`` seconds of forward."""
        for rank, previous in self.last.items():
            before = previous or SimpleNamespace(steps=0, forward_steps=0, forward_sum=0.0)
            current = SimpleNamespace(pid=PID_BASE + rank, steps=before.steps + steps,
                                      forward_steps=before.forward_steps + steps,
                                      forward_sum=before.forward_sum + steps * forward.get(rank, default))
            self.detector.observe(rank, previous, current, 0.0)
            self.last[rank] = current
        self.detector.polled(0.0)


PID_BASE = 1000  # the records' pids: PID_BASE + rank


class Scheduling:
    """Each worker's scheduler accounting as the detector reads it (/proc/<pid>/schedstat):
    seconds on a CPU and seconds waiting for one, advanced by hand. Unknown pids read None."""

    def __init__(self) -> None:
        self.seconds: dict[int, tuple[float, float]] = {}

    def advance(self, rank: int, ran: float, waited: float) -> None:
        on_cpu, waiting = self.seconds.get(PID_BASE + rank, (0.0, 0.0))
        self.seconds[PID_BASE + rank] = (on_cpu + ran, waiting + waited)

    def read(self, pid: int) -> tuple[float, float] | None:
        return self.seconds.get(pid)


@pytest.fixture
def scheduling(monkeypatch):
    accounting = Scheduling()
    monkeypatch.setattr("agent.stragglers.read_scheduling", accounting.read)
    return accounting


@pytest.fixture
def published(monkeypatch):
    """Events and put_metric points the detector publishes, in order."""
    out = {"events": [], "metrics": {}}
    monkeypatch.setattr("agent.stragglers.emit", out["events"].append)
    monkeypatch.setattr("agent.stragglers.put_metric", lambda name, value: out["metrics"].__setitem__(name, value))
    return out


def test_a_worker_is_flagged_after_the_consecutive_steps_not_before(published):
    records = Records(StragglerDetector("trainer", threshold=1.5, steps=10), ranks=4)
    for _ in range(3):  # 9 steps over the threshold
        records.poll(3, {1: 0.06})
    assert published["events"] == [] and records.detector.flagged() == []
    records.poll(1, {1: 0.06})  # the tenth
    assert records.detector.flagged() == [1]
    (event,) = published["events"]
    assert event.name == names.WORKER_STRAGGLER and event.source.value == "WORKER"
    assert event.metadata["local_rank"] == 1 and event.metadata["steps"] == 10
    assert event.metadata["ratio"] == pytest.approx(3.0)
    assert event.metadata["peer_median_seconds"] == pytest.approx(0.02)
    assert published["metrics"]["workers.trainer.worker.1.progress.straggler"] == 1
    assert published["metrics"]["workers.trainer.worker.0.progress.straggler"] == 0
    assert published["metrics"]["workers.trainer.worker.1.progress.forward_seconds"] == pytest.approx(0.06)


def test_a_dip_under_the_threshold_starts_the_count_again(published):
    records = Records(StragglerDetector("trainer", steps=10), ranks=3)
    records.poll(6, {2: 0.06})
    records.poll(6, {2: 0.02})  # back with its peers: the six steps over no longer count
    records.poll(6, {2: 0.06})
    assert records.detector.flagged() == []


def test_a_flagged_worker_recovers_after_as_many_steps_back_under(published):
    records = Records(StragglerDetector("trainer", steps=10), ranks=4)
    records.poll(10, {3: 0.08})
    assert records.detector.flagged() == [3]
    records.poll(5, {})  # its mean over the last 5+ steps is the peers' again
    records.poll(4, {})
    assert records.detector.flagged() == [3]  # 9 steps under
    records.poll(1, {})
    assert records.detector.flagged() == []
    assert [e.name for e in published["events"]] == [names.WORKER_STRAGGLER, names.WORKER_STRAGGLER_RECOVERED]
    assert published["metrics"]["workers.trainer.worker.3.progress.straggler"] == 0


def test_a_worker_that_only_waited_longer_for_a_cpu_is_not_a_straggler(published, scheduling):
    # Four workers on an oversubscribed node: rank 0 keeps losing the scheduler's lottery (it
    # waits 2 s for a CPU per 1 s it runs; its peers wait 0.5 s), so its forward takes twice
    # the wall time of theirs without any more work in it.
    records = Records(StragglerDetector("trainer", steps=5), ranks=4)
    for rank in range(4):
        scheduling.advance(rank, 1.0, 0.0)  # the first read: a baseline, no share yet
    records.poll(1, {})
    for _ in range(10):
        scheduling.advance(0, 1.0, 2.0)
        for rank in (1, 2, 3):
            scheduling.advance(rank, 1.0, 0.5)
        records.poll(2, {0: 0.06}, default=0.03)
    assert records.detector.flagged() == []
    ratio = published["metrics"]["workers.trainer.worker.0.progress.straggler_ratio"]
    assert ratio == pytest.approx((0.06 / 3) / (0.03 / 1.5), rel=0.1)
    # The exported forward time stays the wall time.
    assert published["metrics"]["workers.trainer.worker.0.progress.forward_seconds"] == pytest.approx(0.06, rel=0.1)


def test_a_worker_doing_more_work_stays_a_straggler_however_busy_the_node(published, scheduling):
    # Rank 2 does three times the forward work; every worker runs a third of its runnable time.
    records = Records(StragglerDetector("trainer", steps=5), ranks=4)
    for rank in range(4):
        scheduling.advance(rank, 1.0, 0.0)
    records.poll(1, {})
    for _ in range(5):
        for rank in range(4):
            scheduling.advance(rank, 1.0, 2.0)
        records.poll(2, {2: 0.09}, default=0.03)
    assert records.detector.flagged() == [2]
    (event,) = published["events"]
    assert event.metadata["ratio"] == pytest.approx(3.0, rel=0.05)
    assert event.metadata["weighed_forward_seconds"] == pytest.approx(0.03, rel=0.05)
    assert event.metadata["forward_seconds"] == pytest.approx(0.09, rel=0.05)


def test_one_slow_read_does_not_decide(published):
    # A read that covers a single step (steps of a second or more) is averaged with the reads
    # before it over at least five steps: one hiccup does not push a worker over.
    records = Records(StragglerDetector("trainer", steps=2), ranks=3)
    records.poll(5, {})
    records.poll(1, {0: 0.05})
    assert published["metrics"]["workers.trainer.worker.0.progress.straggler_ratio"] < 1.5
    assert records.detector.flagged() == []


def test_a_lone_worker_has_a_forward_time_but_no_peers_to_compare_with(published):
    records = Records(StragglerDetector("trainer", steps=1), ranks=1)
    records.poll(20, {0: 0.5})
    assert published["metrics"] == {"workers.trainer.worker.0.progress.forward_seconds": 0.5}
    assert published["events"] == []


def test_workers_without_ddp_forwards_are_left_out(published):
    detector = StragglerDetector("trainer", steps=1)
    detector.attempt_started([0, 1])
    plain = SimpleNamespace(pid=0, steps=5, forward_steps=0, forward_sum=0.0)
    detector.observe(0, None, plain, 0.0)
    detector.observe(1, None, plain, 0.0)
    detector.polled(0.0)
    assert published["metrics"] == {} and published["events"] == []


def test_the_end_of_an_attempt_clears_the_flags(published):
    records = Records(StragglerDetector("trainer", steps=5), ranks=2)
    records.poll(5, {0: 0.1})
    assert records.detector.flagged() == [0]
    records.detector.attempt_ended({0: None, 1: None})
    assert records.detector.flagged() == []
    assert published["metrics"]["workers.trainer.worker.0.progress.straggler"] == 0


@pytest.mark.parametrize("threshold, steps", [(1.0, 10), (0.5, 10), (1.5, 0)])
def test_the_detector_refuses_settings_that_cannot_work(threshold, steps):
    with pytest.raises(ValueError):
        StragglerDetector("trainer", threshold, steps)


def test_the_flags_reach_the_agent_and_bad_values_are_one_line_errors(monkeypatch):
    from agent.cli.spec import _agent_options

    parser = build_run_parser()
    args = parser.parse_args(["--straggler-threshold", "2", "--straggler-steps", "4", "x.py"])
    options = _agent_options(args, None)
    assert (options["straggler_threshold"], options["straggler_steps"]) == (2.0, 4)
    defaults = _agent_options(parser.parse_args(["x.py"]), None)
    assert "straggler_threshold" not in defaults and "straggler_steps" not in defaults
    for bad in (["--straggler-threshold", "1"], ["--straggler-threshold", "nan"],
                ["--straggler-steps", "0"], ["--straggler-steps", "2.5"]):
        with pytest.raises(UsageError):
            parser.parse_args([*bad, "x.py"])
    monkeypatch.setenv("ELASTISCOPE_STRAGGLER_STEPS", "7")
    assert build_run_parser().parse_args(["x.py"]).straggler_steps == 7


def test_a_bad_straggler_flag_is_one_line_and_exit_2(tmp_path):
    script = tmp_path / "noop.py"
    script.write_text("")
    result = elastiscope("run", "--straggler-threshold", "0.9", str(script), cwd=tmp_path)
    assert_usage_error(result, "--straggler-threshold", "must be > 1")


def test_the_help_states_the_detectors_defaults():
    text = build_run_parser().format_help()
    assert f"(default {DEFAULT_THRESHOLD:g})" in text and f"(default {DEFAULT_STEPS})" in text
    assert os.path.exists(STRAGGLER_WORKER)
