"""Several nodes on one machine: real agents meeting on torch's c10d rendezvous on 127.0.0.1.

Each node is its own ``elastiscope run`` process with its own endpoint and event log
(tests/cluster.py). The job is examples/train_ddp.py over gloo, checkpointing every 10 steps
into a directory the nodes share, so a re-formed group resumes instead of starting over.

How torch's c10d rendezvous shapes what these tests see:

* The rendezvous state lives in one TCPStore, hosted by whichever agent bound the endpoint's
  port first. Losing that agent loses the rendezvous, so the node a test kills is never the
  host (``Cluster.store_host``).
* With ``--nnodes 1:4`` a round closes ``last_call_timeout`` after its first node joined, so
  a node that starts late may find a one-node world and join it through a membership restart.
  The tests wait for the world they need instead of assuming the first round had everyone.
* A dead node is dropped from the rendezvous when its heartbeat is older than
  ``keep_alive_interval * keep_alive_max_attempt`` (3 s here, FAST_RDZV).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cluster import (
    FAULTS,
    TRAIN_DDP,
    Cluster,
    assert_complete_log,
    free_port,
    metric_value,
    wait_until,
    worker_terminal_events,
)

pytestmark = pytest.mark.timeout(240)
slow = pytest.mark.slow

STEPS = 300
# Seconds for N agents and their workers (each importing torch) to start on 2 busy cores.
FORMATION = 90


def train_args(base: Path, steps: int = STEPS, step_delay: float = 0.02) -> list[str]:
    return [
        "--steps", str(steps), "--step-delay", str(step_delay), "--log-every", "20",
        "--checkpoint-dir", str(base / "checkpoints"), "--checkpoint-every", "10",
    ]


def world_size(node) -> int | None:
    """World size of the node's latest rendezvous round, or None before its first."""
    done = node.events("elastiscope.rendezvous.complete")
    return done[-1]["metadata"]["world_size"] if done else None


def wait_for_world(nodes, size: int, timeout: float = FORMATION) -> None:
    """Every node's latest round has ``size`` workers and its group is running."""
    def formed():
        for n in nodes:
            if not n.alive():
                raise AssertionError(f"{n.name} exited while forming\n{n.diagnostics()}")
            if world_size(n) != size:
                return False
            states = n.events("elastiscope.agent.state_change")
            if not states or states[-1]["metadata"]["state"] != "HEALTHY":
                return False
        return True

    wait_until(formed, timeout, lambda: f"a world of {size}\n"
               + "\n".join(n.diagnostics() for n in nodes))


_ATTEMPT = re.compile(r"train_ddp: world size (\d+), restart (\d+), (?:resuming at step (\d+)|starting fresh)")
_STEP = re.compile(r"train_ddp: step (\d+)/")


def training_log(nodes) -> str:
    """Rank 0's lines (only rank 0 prints), wherever rank 0 ran."""
    return "\n".join(
        line for n in nodes for line in n.stdout().splitlines() if line.startswith("train_ddp:")
    )


def attempts(nodes) -> list[tuple[int, int, int]]:
    """(world size, restart count, step resumed at) for every attempt rank 0 started."""
    return [
        (int(w), int(r), int(s or 0)) for w, r, s in _ATTEMPT.findall(training_log(nodes))
    ]


def wait_for_step(nodes, world: int, step: int, timeout: float = 60) -> None:
    """Training in a world of ``world`` has reached ``step`` (and checkpointed before it)."""
    def reached():
        for n in nodes:
            text = n.stdout()
            starts = [m for m in _ATTEMPT.finditer(text) if int(m.group(1)) == world]
            if starts and any(int(s) >= step for s in _STEP.findall(text[starts[-1].end():])):
                return True
        return False

    wait_until(reached, timeout, lambda: f"step {step} in a world of {world}\n"
               + training_log(nodes))


def since(node, name: str, after_ms: float, **metadata):
    return [e for e in node.events(name, **metadata) if e["timestamp"] >= after_ms]


def assert_training_finished(nodes, world: int, resumed_after: int, steps: int = STEPS) -> None:
    """The last attempt ran in a world of ``world``, resumed from a checkpoint, finished."""
    runs = attempts(nodes)
    assert runs, training_log(nodes)
    last_world, _, resumed_at = runs[-1]
    assert last_world == world, runs
    assert resumed_at >= resumed_after, runs
    assert f"train_ddp: done: {steps} steps" in training_log(nodes)


# ---- scale down ------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [2, pytest.param(3, marks=slow)])
def test_scale_down_when_a_node_is_killed(tmp_path, nodes):
    """SIGKILL one node mid-run: the others re-form a smaller world and finish the training.

    What really happens on the survivors: the killed node's worker vanishes in the middle of
    a gloo all-reduce, so the survivors' workers fail on that collective ("Connection reset
    by peer" / "Connection closed by peer"). Each survivor therefore sees a worker failure and
    restarts for reason "failure" (spending one restart), not "membership": a membership
    restart is what a *joining* node triggers while the group is healthy. The survivors then
    wait in the next round until the dead node's heartbeat expires, and form a world one node
    smaller: rendezvous.complete carries world_size N-1 and previous_world_size N. Training
    resumes from the last checkpoint and completes.
    """
    max_restarts = 3
    steps = 200
    with Cluster(tmp_path, script=TRAIN_DDP, script_args=train_args(tmp_path, steps, 0.01),
                 nnodes="1:4", max_restarts=max_restarts, metrics_linger=60) as job:
        for _ in range(nodes):  # together, so that the first round usually has them all
            job.start()
        wait_for_world(job.nodes, nodes)
        wait_for_step(job.nodes, nodes, 40)

        host = job.store_host()
        assert host is not None, job.diagnostics()
        victim = next(n for n in job.nodes if n is not host)
        survivors = [n for n in job.nodes if n is not victim]
        killed_ms = time.time() * 1000
        victim.kill()
        assert victim.wait(10) == -signal.SIGKILL

        finals = {n.name: n.final_metrics(120) for n in survivors}
        for n in survivors:
            assert n.wait(30) == 0, n.diagnostics()

    # "step 40" is printed just before its checkpoint is written: 30 is the sure lower bound.
    assert_training_finished(survivors, world=nodes - 1, resumed_after=30, steps=steps)
    for n in survivors:
        failures = since(n, "elastiscope.worker.failed", killed_ms)
        assert failures, n.diagnostics()
        restarts = since(n, "elastiscope.agent.restart", killed_ms)
        assert restarts and restarts[0]["metadata"]["reason"] == "failure", restarts
        last_round = n.events("elastiscope.rendezvous.complete")[-1]["metadata"]
        assert (last_round["world_size"], last_round["previous_world_size"]) == (nodes - 1, nodes)
        assert_complete_log(n, "SUCCEEDED")
        assert set(worker_terminal_events(n).values()) == {"SUCCEEDED"}

        metrics = finals[n.name]
        failure_restarts = metric_value(metrics, "elastiscope_restarts_total", reason="failure")
        assert failure_restarts >= 1, metrics
        assert metric_value(metrics, "elastiscope_world_size") == nodes - 1
        assert metric_value(metrics, "elastiscope_group_world_size") == nodes - 1
        assert metric_value(metrics, "elastiscope_remaining_restarts") == max_restarts - failure_restarts


# ---- scale up --------------------------------------------------------------------------------


@slow
def test_scale_up_when_a_node_joins(tmp_path):
    """A third node joins a running two-node job. The running agents see a node waiting at
    the rendezvous and restart their healthy group for reason "membership", which spends no
    restart (remaining_restarts stays at max_restarts); the next round has all three nodes,
    and training resumes from the checkpoint in the bigger world and completes."""
    max_restarts = 2
    with Cluster(tmp_path, script=TRAIN_DDP, script_args=train_args(tmp_path), nnodes="1:4",
                 max_restarts=max_restarts, metrics_linger=60) as job:
        job.start()
        job.start()
        first = list(job.nodes)
        wait_for_world(first, 2)
        wait_for_step(first, 2, 20)

        joined_ms = time.time() * 1000
        joiner = job.start("joiner")
        wait_until(
            lambda: all(since(n, "elastiscope.agent.restart", joined_ms, reason="membership")
                        for n in first),
            60, lambda: "a membership restart on both running nodes\n" + job.diagnostics(),
        )
        wait_for_world(job.nodes, 3)
        finals = {n.name: n.final_metrics(120) for n in job.nodes}
        for n in job.nodes:
            assert n.wait(30) == 0, n.diagnostics()

    assert_training_finished(job.nodes, world=3, resumed_after=10)
    for n in first:
        [restart] = since(n, "elastiscope.agent.restart", joined_ms)
        md = restart["metadata"]
        assert md["reason"] == "membership"
        assert md["nodes_waiting"] >= 1
        assert md["remaining_restarts"] == max_restarts
        last_round = n.events("elastiscope.rendezvous.complete")[-1]["metadata"]
        assert (last_round["world_size"], last_round["previous_world_size"]) == (3, 2)
        assert since(n, "elastiscope.worker.failed", joined_ms) == []
    assert joiner.events("elastiscope.rendezvous.complete")[-1]["metadata"]["world_size"] == 3
    for n in job.nodes:
        assert_complete_log(n, "SUCCEEDED")
        assert set(worker_terminal_events(n).values()) == {"SUCCEEDED"}
        metrics = finals[n.name]
        assert metric_value(metrics, "elastiscope_world_size") == 3
        assert metric_value(metrics, "elastiscope_remaining_restarts") == max_restarts
        assert not metric_value(metrics, "elastiscope_restarts_total", reason="failure")
    for n in first:
        assert metric_value(finals[n.name], "elastiscope_restarts_total", reason="membership") >= 1


# ---- finishing ---------------------------------------------------------------------------------


def test_nodes_finishing_at_different_times_all_exit_zero(tmp_path):
    """Group rank 0's worker finishes 3 s before group rank 1's. Rank 0's agent waits in the
    exit barrier instead of leaving (and taking the store, if it hosts it, from under the
    other); both exit 0. While they run, each node's own endpoint reports its own place in
    the world."""
    out = tmp_path / "out"
    with Cluster(tmp_path, script=FAULTS / "sleeper.py",
                 script_args=["--out", str(out), "--seconds", "1", "--per-group-rank", "3"],
                 nnodes="2:2", max_restarts=0) as job:
        job.start()
        job.start()
        wait_for_world(job.nodes, 2, timeout=60)
        statuses = [wait_until(n.status, 60, f"/status of {n.name}") for n in job.nodes]
        codes = job.wait_all(60)

    assert codes == [0, 0], job.diagnostics()
    assert sorted(s["group_rank"] for s in statuses) == [0, 1]
    assert {(s["group_world_size"], s["world_size"]) for s in statuses} == {(2, 2)}
    by_rank = {n.events("elastiscope.rendezvous.complete")[-1]["metadata"]["group_rank"]: n
               for n in job.nodes}
    early, late = by_rank[0], by_rank[1]
    waited = float(re.search(r"all agents done; waited ([\d.]+)s", early.stderr()).group(1))
    assert waited >= 2.0, early.stderr()
    for n in job.nodes:
        assert_complete_log(n, "SUCCEEDED")
    assert sorted(p.name for p in out.glob("*.done")) == ["0.done", "1.done"]


# ---- etcd ------------------------------------------------------------------------------------


def _etcd_available() -> str | None:
    """Why the etcd case cannot run here, or None when it can."""
    if shutil.which("etcd") is None:
        return "no etcd binary (apt-get install etcd-server)"
    try:
        import etcd  # noqa: F401  (python-etcd, what torch's etcd handlers import)
    except ImportError:
        return "no python etcd client (pip install python-etcd)"
    return None


@pytest.fixture
def etcd_server(tmp_path):
    """A throwaway etcd with the v2 API (torch's etcd handlers speak v2) on free ports."""
    reason = _etcd_available()
    if reason:
        pytest.skip(reason)
    client, peer = free_port(), free_port()
    proc = subprocess.Popen(
        ["etcd", "--enable-v2", "--data-dir", str(tmp_path / "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"default=http://127.0.0.1:{peer}"],
        stdout=open(tmp_path / "etcd.log", "wb"), stderr=subprocess.STDOUT,
    )
    try:
        import httpx

        def healthy():
            try:
                return httpx.get(f"http://127.0.0.1:{client}/v2/keys", timeout=1).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None and pytest.fail((tmp_path / "etcd.log").read_text())
        wait_until(healthy, 30, "etcd to answer")
        yield f"127.0.0.1:{client}"
    finally:
        proc.kill()
        proc.wait(10)


@slow
@pytest.mark.parametrize("backend", ["etcd-v2"])
def test_scale_down_on_etcd(tmp_path, etcd_server, backend):
    """The same scale-down as on c10d, with the rendezvous state in etcd (torch's etcd-v2
    backend of the dynamic rendezvous): no node hosts it, so any node may be the victim."""
    with Cluster(tmp_path, script=TRAIN_DDP, script_args=train_args(tmp_path), nnodes="1:4",
                 rdzv_backend=backend, rdzv_endpoint=etcd_server, max_restarts=3,
                 metrics_linger=60) as job:
        for _ in range(3):
            job.start()
        wait_for_world(job.nodes, 3)
        wait_for_step(job.nodes, 3, 40)
        victim, survivors = job.nodes[-1], job.nodes[:-1]
        killed_ms = time.time() * 1000
        victim.kill()
        finals = {n.name: n.final_metrics(120) for n in survivors}
        for n in survivors:
            assert n.wait(30) == 0, n.diagnostics()

    assert_training_finished(survivors, world=2, resumed_after=30)
    for n in survivors:
        assert since(n, "elastiscope.agent.restart", killed_ms, reason="failure")
        last_round = n.events("elastiscope.rendezvous.complete")[-1]["metadata"]
        assert (last_round["world_size"], last_round["previous_world_size"]) == (2, 3)
        assert last_round["rdzv_backend"] == backend
        assert metric_value(finals[n.name], "elastiscope_world_size") == 2
