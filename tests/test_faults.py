"""The fault suite: real ``elastiscope run`` processes meeting real failures.

Each case starts the agent as a subprocess (tests/cluster.py), injects one fault with a worker
script from tests/faults/ or from outside, and checks four things:

* the exit status the fault calls for;
* the events that tell the story (worker.failed with the right signal or exit code, restart
  reasons, run_end state) and that none were lost: the event log holds run_start ... run_end
  and every worker's terminal event, including after a SIGTERM;
* no process the test started outlives it (checked when each Cluster closes);
* the job's own work is done in full wherever the fault should not affect it.

Every case is bounded in time. The few cheapest cases form CI's representative subset;
``scripts/fault-suite`` runs them all.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from cluster import (
    FAULTS,
    Cluster,
    assert_complete_log,
    free_port,
    metric_value,
    names,
    single_node,
    wait_until,
    worker_terminal_events,
)

pytestmark = pytest.mark.timeout(120)
slow = pytest.mark.slow

# Seconds an agent may take to start, rendezvous alone and launch workers on a busy 2-core box.
STARTUP = 20


def fault(name: str) -> str:
    return str(FAULTS / name)


def assert_signalled_log(node) -> None:
    """run_start ... run_end SIGNALED, and the launcher's own FAILED event, recorded after the
    agent's run() had already unwound, is there too: the log was flushed to its last event."""
    events = assert_complete_log(node, "SIGNALED")
    last = events[-1]
    assert (last["name"], last["source"]) == ("torchelastic.worker.status.FAILED", "AGENT"), names(events)


# ---- workers dying -----------------------------------------------------------------------------

DEATHS = {
    # how: (exit code the agent reports, signal name it reports)
    "segv": (-signal.SIGSEGV, "SIGSEGV"),
    "sigkill": (-signal.SIGKILL, "SIGKILL"),
    "exit137": (137, None),
}


@pytest.mark.parametrize(
    "how", [
        "segv",
        pytest.param("sigkill", marks=slow),
        pytest.param("exit137", marks=slow),
    ],
)
def test_worker_death_is_reported_live_and_the_restarted_group_finishes(tmp_path, how):
    """A worker dies once (a real segfault, SIGKILL, or ``os._exit(137)``) among running peers.

    The agent publishes elastiscope.worker.failed with what killed it (a signal is a negative
    exit code plus its name; exit 137 is an exit code, not a signal), restarts the group for
    reason "failure" spending one restart, and the second attempt does all the work.
    """
    out = tmp_path / "out"
    exit_code, signal_name = DEATHS[how]
    with single_node(
        tmp_path, fault("die_once.py"), ["--how", how, "--rank", "1", "--out", str(out)],
        nproc_per_node=2, max_restarts=1, metrics_linger=30,
    ) as job:
        node = job.start()
        metrics = node.final_metrics(STARTUP + 40)
        assert node.wait(10) == 0, node.diagnostics()

    [failed] = node.events("elastiscope.worker.failed")
    md = failed["metadata"]
    assert (md["global_rank"], md["local_rank"]) == (1, 1)
    assert md["exit_code"] == exit_code
    assert md["signal"] == signal_name
    assert md["worker_pid"] == int((out / "started.0.1").read_text())
    [restart] = node.events("elastiscope.agent.restart")
    assert restart["metadata"]["reason"] == "failure"
    assert restart["metadata"]["remaining_restarts"] == 0
    assert json.loads(restart["metadata"]["failed_ranks"]) == [1]

    assert_complete_log(node, "SUCCEEDED")
    assert worker_terminal_events(node) == {0: "SUCCEEDED", 1: "SUCCEEDED"}
    assert [(out / f"rank{r}.done").read_text() for r in (0, 1)] == ["20", "20"]

    labels = {"local_rank": "1", "signal": signal_name or "", "exit_code": str(exit_code)}
    assert metric_value(metrics, "elastiscope_worker_failures_total", **labels) == 1, metrics
    assert metric_value(metrics, "elastiscope_restarts_total", reason="failure") == 1
    assert metric_value(metrics, "elastiscope_remaining_restarts") == 0


def test_worker_exception_under_record_reaches_events_and_console(tmp_path):
    """``@record`` writes the exception to the error file; the agent reports its message.

    The message shows up in the live worker.failed event, in torch's FAILED event for that
    rank (raw_error), and in the failure summary on the agent's stderr. No restart budget:
    the run fails, the healthy rank is reported TERMINATED.
    """
    message = f"injected failure {uuid.uuid4().hex[:8]}"
    with single_node(
        tmp_path, fault("raise_under_record.py"), ["--rank", "1", "--message", message],
        nproc_per_node=2, max_restarts=0,
    ) as job:
        node = job.start()
        assert node.wait(STARTUP + 30) == 1, node.diagnostics()

    [failed] = node.events("elastiscope.worker.failed")
    assert message in failed["metadata"]["error_message"]
    assert failed["metadata"]["exit_code"] == 1
    assert "ValueError" in failed["metadata"]["raw_error"]
    [torch_failed] = [
        e for e in node.events("torchelastic.worker.status.FAILED") if e["source"] == "WORKER"
    ]
    assert torch_failed["metadata"]["global_rank"] == 1
    assert message in torch_failed["metadata"]["raw_error"]
    assert_complete_log(node, "FAILED")
    assert worker_terminal_events(node) == {0: "TERMINATED", 1: "FAILED"}
    assert message in node.stderr()
    assert node.events("elastiscope.agent.restart") == []


def test_worker_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    """Rank 1 fails; rank 0 ignores the agent's SIGTERM and is SIGKILLed once the grace
    period (``--shutdown-timeout 2``) is over, not before and not much later."""
    ready = tmp_path / "ready"
    grace = 2
    with single_node(
        tmp_path, fault("ignore_sigterm.py"), ["--ready", str(ready)],
        nproc_per_node=2, max_restarts=0, agent_args=["--shutdown-timeout", str(grace)],
    ) as job:
        node = job.start()
        assert node.wait(STARTUP + 30) == 1, node.diagnostics()

    stubborn = int((ready / "ignoring").read_text())
    assert not psutil.pid_exists(stubborn) or psutil.Process(stubborn).status() == psutil.STATUS_ZOMBIE
    [failed] = node.events("elastiscope.worker.failed")
    assert failed["metadata"]["global_rank"] == 1 and failed["metadata"]["exit_code"] == 3
    [end] = node.events("elastiscope.agent.run_end")
    stop_seconds = (end["timestamp"] - failed["timestamp"]) / 1000
    assert grace - 0.1 <= stop_seconds < grace + 5, stop_seconds
    assert_complete_log(node, "FAILED")
    assert worker_terminal_events(node) == {0: "TERMINATED", 1: "FAILED"}


@pytest.mark.parametrize(
    "kind", ["garbage", pytest.param("empty", marks=slow), pytest.param("huge", marks=slow)]
)
def test_a_broken_error_file_still_reports_the_failure(tmp_path, kind):
    """An error file that is not JSON, empty, or 20 MB of message does not hide the failure:
    worker.failed carries the exit code, the run ends FAILED with its events written."""
    with single_node(
        tmp_path, fault("bad_error_file.py"), ["--kind", kind, "--megabytes", "20"],
        nproc_per_node=1, max_restarts=0,
    ) as job:
        node = job.start()
        assert node.wait(STARTUP + 40) == 1, node.diagnostics()

    [failed] = node.events("elastiscope.worker.failed")
    assert failed["metadata"]["exit_code"] == 1
    assert failed["metadata"]["global_rank"] == 0
    assert_complete_log(node, "FAILED")
    assert worker_terminal_events(node) == {0: "FAILED"}


# ---- a worker flooding its output --------------------------------------------------------------


@slow
@pytest.mark.parametrize("streams", ["inherited", "tee"])
def test_a_worker_printing_100_mb_finishes_normally(tmp_path, streams):
    """100 MB on a worker's stdout, straight to the agent's stdout or through the agent's tee
    (log file + prefixed console copy), neither stalls the job nor loses the last line."""
    agent_args = []
    if streams == "tee":
        agent_args = ["--tee", "3", "--log-dir", str(tmp_path / "logs")]
    started = time.monotonic()
    with single_node(
        tmp_path, fault("chatty.py"), ["--megabytes", "100"], nproc_per_node=1,
        agent_args=agent_args,
    ) as job:
        node = job.start()
        assert node.wait(STARTUP + 90) == 0, node.diagnostics()
    elapsed = time.monotonic() - started

    assert node.stdout_path.stat().st_size >= 100 * 1024 * 1024
    assert "chatty: done" in _tail_text(node.stdout_path)
    if streams == "tee":
        [log_file] = list((tmp_path / "logs").rglob("stdout.log"))
        assert log_file.stat().st_size >= 100 * 1024 * 1024
        assert "chatty: done" in _tail_text(log_file)
    assert_complete_log(node, "SUCCEEDED")
    assert worker_terminal_events(node) == {0: "SUCCEEDED"}
    print(f"100 MB via {streams}: {elapsed:.1f}s")


def _tail_text(path: Path, size: int = 4096) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode(errors="replace")


# ---- the agent told to stop --------------------------------------------------------------------


@slow
def test_agent_sigterm_during_rendezvous_exits_with_its_log_flushed(tmp_path):
    """SIGTERM while the agent waits for a second node: it stops promptly, starts no worker,
    and its log ends with run_end state SIGNALED."""
    with Cluster(tmp_path, script=fault("sleeper.py"), script_args=["--out", str(tmp_path / "out")],
                 nnodes="2:2", max_restarts=0) as job:
        node = job.start()
        node.wait_event("elastiscope.rendezvous.DynamicRendezvousHandler.next_rendezvous", STARTUP)
        node.send(signal.SIGTERM)
        assert node.wait(15) == 1, node.diagnostics()

    assert_signalled_log(node)
    assert "torchelastic.worker.status.START" not in names(node.events())
    assert "stopped by SIGTERM" in node.stderr()


def test_agent_sigterm_during_the_run_stops_the_workers_and_flushes_the_log(tmp_path):
    """SIGTERM to a running agent reaches every worker (they record it), the agent exits 1,
    and its log holds run_start ... run_end SIGNALED."""
    out = tmp_path / "out"
    with single_node(tmp_path, fault("sleeper.py"), ["--out", str(out), "--seconds", "60"],
                     nproc_per_node=2) as job:
        node = job.start()
        wait_until(lambda: len(list(out.glob("*.started"))) == 2, STARTUP, node.diagnostics)
        node.send(signal.SIGTERM)
        assert node.wait(15) == 1, node.diagnostics()

    assert sorted(p.name for p in out.glob("*.sigterm")) == ["0.sigterm", "1.sigterm"]
    assert_signalled_log(node)


def test_agent_sigterm_during_the_exit_barrier(tmp_path):
    """Node A's workers are done and A waits in the exit barrier for node B; SIGTERM to A ends
    the wait at once (not after the 300 s barrier timeout) with its log flushed. B, whose
    workers still run, is then stopped the same way.

    A is the node that does not host the c10d store: the host leaving would take the
    rendezvous state away from B, which then fails on its next store access instead.
    """
    out = tmp_path / "out"
    with Cluster(tmp_path, script=fault("sleeper.py"), script_args=["--out", str(out)],
                 nnodes="2:2", max_restarts=0) as job:
        host = job.start_host("b", env={"SLEEPER_SECONDS": "60"})
        done = job.start("a", env={"SLEEPER_SECONDS": "0.5"})
        done.wait_event("elastiscope.agent.state_change", STARTUP + 20, state="SUCCEEDED")
        wait_until(lambda: "all agents done" not in done.stderr() and "waiting up to" in done.stderr(),
                   5, done.diagnostics)
        in_barrier = time.monotonic()
        done.send(signal.SIGTERM)
        assert done.wait(15) == 1, done.diagnostics()
        assert time.monotonic() - in_barrier < 5
        host.send(signal.SIGTERM)
        assert host.wait(15) == 1, host.diagnostics()

    assert_signalled_log(done)
    assert "stopped by SIGTERM" in done.stderr()
    assert_signalled_log(host)
    # A's worker finished on its own; B's was stopped by the SIGTERM forwarded to it.
    assert len(list(out.glob("*.done"))) == 1 and len(list(out.glob("*.sigterm"))) == 1


# ---- telemetry outputs failing -----------------------------------------------------------------


@pytest.mark.parametrize("where", [pytest.param("under /proc", marks=slow), "under a file"])
def test_an_event_log_that_cannot_be_created_is_one_line_and_exit_2(tmp_path, where):
    """The event log is checked before anything starts: bad input, one line, nothing left."""
    if where == "under /proc":
        path = f"/proc/elastiscope-{uuid.uuid4().hex[:8]}/"
    else:
        (tmp_path / "a-file").write_text("")
        path = str(tmp_path / "a-file" / "events.jsonl")
    with single_node(tmp_path, fault("sleeper.py"), ["--out", str(tmp_path / "out")],
                     agent_args=["--event-log", path]) as job:
        node = job.start()
        assert node.wait(STARTUP) == 2, node.diagnostics()

    lines = node.stderr().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        ("elastiscope run: error: event log", "elastiscope run: error: --event-log: ")), lines
    assert not (tmp_path / "out").exists()


def test_event_log_writes_failing_do_not_stop_the_job(tmp_path):
    """``--event-log /dev/full``: every write fails (ENOSPC). The job still succeeds, the
    failures are counted on /metrics, and the events are still served on /events."""
    out = tmp_path / "out"
    with single_node(tmp_path, fault("sleeper.py"), ["--out", str(out), "--seconds", "0.2"],
                     agent_args=["--event-log", "/dev/full"], metrics_linger=30) as job:
        node = job.start()
        wait_until(lambda: "elastiscope: run " in node.stderr(), STARTUP + 20, node.diagnostics)
        served = node.get("/events?name=elastiscope.agent.run_end").json()
        metrics = node.final_metrics(20)
        assert node.wait(10) == 0, node.diagnostics()

    assert "SUCCEEDED" in json.dumps(served)
    assert metric_value(metrics, "elastiscope_telemetry_sink_errors_total", sink="jsonl") > 0
    assert sorted(p.name for p in out.glob("*.done")) == ["0.done", "1.done"]


def test_sinks_that_raise_are_counted_and_contained(tmp_path):
    """A synchronous sink raising inside every emit, and a queued ``record`` destination
    raising on every event: the job runs as usual, the log is complete, errors are counted."""
    out = tmp_path / "out"
    with single_node(
        tmp_path, fault("sleeper.py"), ["--out", str(out), "--seconds", "0.2"],
        agent_args=["--event-log-handler", "raising"], metrics_linger=30,
        launcher=[sys.executable, fault("raising_sink_agent.py")],
    ) as job:
        node = job.start()
        metrics = node.final_metrics(STARTUP + 20)
        assert node.wait(10) == 0, node.diagnostics()

    assert_complete_log(node, "SUCCEEDED")
    assert worker_terminal_events(node) == {0: "SUCCEEDED", 1: "SUCCEEDED"}
    assert metric_value(metrics, "elastiscope_telemetry_sink_errors_total", sink="raising_sync") > 0
    assert metric_value(metrics, "elastiscope_telemetry_sink_errors_total", sink="raising") > 0
    assert sorted(p.name for p in out.glob("*.done")) == ["0.done", "1.done"]


@pytest.mark.parametrize("otlp", ["refusing", pytest.param("silent", marks=slow)])
def test_an_unusable_otlp_endpoint_does_not_hold_up_the_job(tmp_path, otlp):
    """OTLP/HTTP to a port that refuses connections, or to one that accepts and never answers:
    the job succeeds, its event log is complete, and the agent exits within its flush deadline."""
    listener = None
    if otlp == "refusing":
        url = f"http://127.0.0.1:{free_port()}"
    else:
        # Connections complete in the kernel's backlog; nobody ever reads or answers them.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    out = tmp_path / "out"
    try:
        with single_node(tmp_path, fault("sleeper.py"), ["--out", str(out), "--seconds", "0.2"],
                         agent_args=["--otlp-endpoint", url]) as job:
            node = job.start()
            wait_until(lambda: "elastiscope: run " in node.stderr(), STARTUP + 20, node.diagnostics)
            finished = time.monotonic()
            assert node.wait(20) == 0, node.diagnostics()
            exit_delay = time.monotonic() - finished
    finally:
        if listener is not None:
            listener.close()

    assert_complete_log(node, "SUCCEEDED")
    assert sorted(p.name for p in out.glob("*.done")) == ["0.done", "1.done"]
    assert exit_delay < 12, exit_delay


# ---- rendezvous ------------------------------------------------------------------------------


def test_unreachable_rendezvous_endpoint_fails_with_one_clear_line_in_time(tmp_path):
    """A c10d endpoint nobody listens on (and that this node must not host): the agent gives
    up within the configured read_timeout (torch's TCPStore tries twice), exit 1, no worker
    started, no Python traceback, and one last line that names the endpoint and says why
    (torch's own message only points at an "inner exception" nobody sees)."""
    read_timeout = 1
    join_timeout = 120
    port = free_port()
    job = Cluster(
        tmp_path, script=fault("sleeper.py"), script_args=["--out", str(tmp_path / "out")],
        nnodes="1:2", max_restarts=0, rdzv_endpoint=f"127.0.0.1:{port}",
        rdzv={"is_host": "false", "read_timeout": read_timeout, "join_timeout": join_timeout},
    )
    with job:
        node = job.start()
        assert node.wait(join_timeout) == 1, node.diagnostics()
    elapsed = node.ended - node.started

    last = node.stderr().strip().splitlines()[-1]
    assert last.startswith(f"elastiscope: error: rendezvous: c10d at 127.0.0.1:{port}: "), last
    assert "timed out" in last, last
    assert "Traceback (most recent call last)" not in node.stderr()
    assert not (tmp_path / "out").exists()
    # It gave up on the read timeout, not on the join timeout: start-up (the torch import, many
    # seconds on a busy machine) plus two connection attempts stay far below the join timeout.
    # How fast that is on a quiet machine is a benchmark's question, not this test's.
    assert elapsed < join_timeout / 2, elapsed
