"""Test harness: real ``elastiscope run`` agents as subprocesses on 127.0.0.1.

Each agent is a separate node: its own process, HTTP endpoint (``--metrics-port``), JSON Lines
event log (``--event-log``), stdout/stderr files and working directory. Nodes of one job meet
on torch's c10d rendezvous at a TCPStore that the first node hosts on a free port.

What the tests get from here:

* :class:`Node` -- one agent process: its events (read from the log as it grows), its
  ``/metrics`` and ``/status``, signals, exit status, captured output;
* :class:`Cluster` -- several nodes of one rendezvous id, started and torn down together;
* :func:`wait_until` -- polling with a deadline (no sleeps as synchronisation);
* orphan checks: every process a test starts carries a marker variable in its environment
  (inherited by the spawner, the workers and their standbys), so after the agents are gone
  :meth:`Cluster.leftovers` finds anything still alive, whoever its parent now is.

Output goes to files, never to pipes nobody reads: a worker printing 100 MB must not block on
a full pipe because the test is busy polling.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar

import psutil

from helpers.polling import wait_until  # noqa: F401  (re-exported for the suites)

ROOT = Path(__file__).resolve().parent.parent
TRAIN_DDP = ROOT / "examples" / "train_ddp.py"
FAULTS = Path(__file__).resolve().parent / "faults"
MARKER_VAR = "ELASTISCOPE_TEST_CLUSTER"

# Rendezvous settings small enough for tests: a dead node's heartbeat expires after
# keep_alive_interval * keep_alive_max_attempt seconds, a round closes last_call_timeout
# seconds after min_nodes joined, and a node gives up joining after join_timeout.
FAST_RDZV = {
    "join_timeout": 60,
    "last_call_timeout": 2,
    "close_timeout": 10,
    "keep_alive_interval": 1,
    "keep_alive_max_attempt": 3,
    "timeout": 60,
}

T = TypeVar("T")


# ---- small utilities -----------------------------------------------------------------------


def free_ports(count: int = 1) -> list[int]:
    """Distinct ports free right now (all held open until all are picked, so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def rdzv_conf(settings: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.items())


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events of a JSON Lines log as written so far (a half-written last line is skipped)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    events = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # the writer is mid-line; the next read sees it whole
    return events


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) for every sample of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metric_value(samples: Iterable[tuple[str, dict, float]], name: str, **labels: str) -> float | None:
    """Sum of the samples named ``name`` whose labels include ``labels``; None if there are none."""
    values = [
        v for n, lab, v in samples
        if n == name and all(lab.get(k) == str(want) for k, want in labels.items())
    ]
    return sum(values) if values else None


def marked_processes(marker: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``MARKER_VAR=marker``."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(MARKER_VAR) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            pass
    return found


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


# ---- one node ------------------------------------------------------------------------------


class Node:
    """One ``elastiscope run`` process and everything it writes."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        workdir: Path,
        env: dict[str, str],
        event_log: Path | None,
        metrics_port: int | None,
        watch_metrics: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.event_log = event_log
        self.metrics_port = metrics_port
        self.stdout_path = workdir / "stdout.txt"
        self.stderr_path = workdir / "stderr.txt"
        workdir.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv, cwd=workdir, env=env, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL,
            )
        self.started = time.monotonic()
        self.ended: float | None = None
        # The agent keeps its endpoint up after the job (--metrics-linger) only for a run that
        # was scraped: one scrape early in the run, as a watching Prometheus would make. Only
        # one, so that the scrape ending the linger is the test's own (final_metrics).
        if watch_metrics and metrics_port is not None:
            threading.Thread(target=self._scrape_once, daemon=True).start()

    def _scrape_once(self) -> None:
        while self.alive() and self.metrics() is None:
            time.sleep(0.1)

    # -- process --
    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def kill(self) -> None:
        self.send(signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        """Exit status; fails the test (with the node's output) if it does not exit in time."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout:.0f}s\n{self.diagnostics()}"
            ) from None
        if self.ended is None:
            self.ended = time.monotonic()
        return code

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    # -- output --
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def diagnostics(self) -> str:
        names = [e["name"] for e in self.events()][-40:]
        return (
            f"--- {self.name} ({' '.join(self.argv[:4])} ...) exit={self.proc.poll()}\n"
            f"--- events (last 40): {names}\n"
            f"--- stderr tail:\n{_tail(self.stderr_path)}\n"
            f"--- stdout tail:\n{_tail(self.stdout_path, 1500)}"
        )

    # -- events --
    def events(self, name: str | None = None, **metadata: Any) -> list[dict[str, Any]]:
        """Events logged so far, optionally by name and metadata values."""
        if self.event_log is None:
            return []
        found = []
        for e in read_events(self.event_log):
            if name is not None and e.get("name") != name:
                continue
            md = e.get("metadata") or {}
            if all(md.get(k) == v for k, v in metadata.items()):
                found.append(e)
        return found

    def wait_event(
        self, name: str, timeout: float, count: int = 1, **metadata: Any
    ) -> list[dict[str, Any]]:
        """The first ``count`` events matching; waits for them with a deadline."""
        def seen():
            found = self.events(name, **metadata)
            if len(found) >= count:
                return found
            if not self.alive() and len(self.events(name, **metadata)) < count:
                raise AssertionError(
                    f"{self.name} exited without {count} x {name} {metadata or ''}\n"
                    f"{self.diagnostics()}"
                )
            return None

        return wait_until(
            seen, timeout, lambda: f"{count} x {name} {metadata or ''} on {self.name}\n"
            f"{self.diagnostics()}",
        )

    # -- endpoint --
    @property
    def url(self) -> str:
        if self.metrics_port is None:
            raise AssertionError(f"{self.name} has no endpoint")
        return f"http://127.0.0.1:{self.metrics_port}"

    def get(self, path: str, timeout: float = 5.0):
        import httpx

        return httpx.get(self.url + path, timeout=timeout)

    def metrics(self) -> list[tuple[str, dict, float]] | None:
        """Parsed ``/metrics``, or None while (or once) the endpoint does not answer."""
        try:
            response = self.get("/metrics")
        except Exception:
            return None
        if response.status_code != 200:
            return None
        return parse_metrics(response.text)

    def final_metrics(self, timeout: float) -> list[tuple[str, dict, float]]:
        """``/metrics`` as the run ended, read during the endpoint's end-of-job linger.

        The node must run with ``--metrics-linger`` > 0 (its cluster then scrapes it once
        early, so that it lingers): once it prints its final line the endpoint waits for one
        scrape after the end. Scraping until the process exits makes sure one of them came
        after it, and the last answer is the final state.
        """
        wait_until(lambda: "elastiscope: run " in self.stderr() or not self.alive(), timeout,
                   lambda: f"{self.name} to finish its run\n{self.diagnostics()}")
        last = None

        def scraped_until_exit():
            nonlocal last
            samples = self.metrics()
            if samples is not None:
                last = samples
            return not self.alive()

        wait_until(scraped_until_exit, timeout,
                   lambda: f"{self.name} to exit after its final scrape\n{self.diagnostics()}",
                   interval=0.1)
        if last is None:
            raise AssertionError(f"{self.name}: no /metrics answer at the end\n{self.diagnostics()}")
        return last

    def status(self) -> dict[str, Any] | None:
        try:
            response = self.get("/status")
        except Exception:
            return None
        return response.json() if response.status_code == 200 else None


# ---- how nodes are started ---------------------------------------------------------------


def node_env(marker: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env[MARKER_VAR] = marker
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["ELASTISCOPE_LOG_FORMAT"] = "json"
    # Each node's own log and endpoint come from flags; nothing inherited may redirect them.
    for var in ("ELASTISCOPE_EVENT_LOG", "ELASTISCOPE_METRICS_PORT", "ELASTISCOPE_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT", "ELASTISCOPE_PUSHGATEWAY"):
        env.pop(var, None)
    env.update(extra or {})
    return env


class Cluster:
    """Nodes of one job: same rendezvous id and endpoint, each node in ``base/<name>``.

    Use as a context manager: on exit every node still running is SIGKILLed, and the test
    fails if any process it started (agents, spawners, workers, standbys) outlives them.
    """

    def __init__(
        self,
        base: Path,
        script: Path | str = TRAIN_DDP,
        script_args: Sequence[str] = (),
        nnodes: str = "1:4",
        nproc_per_node: int = 1,
        max_restarts: int = 3,
        rdzv_backend: str = "c10d",
        rdzv_endpoint: str | None = None,
        rdzv: dict[str, Any] | None = None,
        agent_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        metrics_linger: float = 0,
        launcher: Sequence[str] | None = None,
    ) -> None:
        self.base = base
        # The command before the arguments of ``run``; a test may wrap the CLI in its own script.
        self.launcher = list(launcher) if launcher else [sys.executable, "-m", "agent", "run"]
        self.script = str(script)
        self.script_args = list(script_args)
        self.nnodes = nnodes
        self.nproc_per_node = nproc_per_node
        self.max_restarts = max_restarts
        self.rdzv_backend = rdzv_backend
        self.rdzv_port = free_port()
        self.rdzv_endpoint = rdzv_endpoint or f"127.0.0.1:{self.rdzv_port}"
        self.rdzv = dict(FAST_RDZV if rdzv is None else rdzv)
        self.rdzv_id = f"test-{uuid.uuid4().hex[:10]}"
        self.agent_args = list(agent_args)
        self.marker = uuid.uuid4().hex
        self.env = node_env(self.marker, env)
        self.metrics_linger = metrics_linger
        self.nodes: list[Node] = []

    # -- starting --
    def node_argv(self, metrics_port: int, event_log: Path, extra: Sequence[str] = ()) -> list[str]:
        return [
            *self.launcher,
            "--nnodes", self.nnodes,
            "--nproc-per-node", str(self.nproc_per_node),
            "--rdzv-backend", self.rdzv_backend,
            "--rdzv-endpoint", self.rdzv_endpoint,
            "--rdzv-id", self.rdzv_id,
            "--rdzv-conf", rdzv_conf(self.rdzv),
            "--local-addr", "127.0.0.1",
            "--max-restarts", str(self.max_restarts),
            "--monitor-interval", "0.1",
            "--shutdown-timeout", "5",
            "--metrics-port", str(metrics_port),
            "--metrics-linger", str(self.metrics_linger),
            "--log-format", "console",  # lines for a person: the suites read them as text
            "--event-log", str(event_log),
            *self.agent_args,
            *extra,
            self.script,
            *self.script_args,
        ]

    def start(
        self, name: str | None = None, extra: Sequence[str] = (), env: dict[str, str] | None = None
    ) -> Node:
        """Start one more node; ``extra`` agent flags and ``env`` apply to this node only."""
        name = name or f"node{len(self.nodes)}"
        workdir = self.base / name
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        event_log = workdir / "events.jsonl"
        node_env = {**self.env, **(env or {})}
        node = Node(name, self.node_argv(port, event_log, extra), workdir, node_env, event_log, port,
                    watch_metrics=self.metrics_linger > 0)
        self.nodes.append(node)
        return node

    def start_host(
        self, name: str | None = None, timeout: float = 120.0, env: dict[str, str] | None = None
    ) -> Node:
        """Start a node and wait until it hosts the rendezvous store (a generous deadline: the
        agent imports torch first, which takes many seconds on an overloaded machine).

        Nodes that start later connect to it; knowing which node hosts the store matters
        because that node leaving takes the rendezvous down with it (torch's c10d backend
        keeps its state in that one TCPStore).
        """
        node = self.start(name, env=env)
        wait_until(
            lambda: _listening(self.rdzv_port) or (not node.alive() and _fail(node)),
            timeout, lambda: f"{node.name} to host the rendezvous store\n{node.diagnostics()}",
        )
        return node

    # -- observing --
    def store_host(self) -> Node | None:
        """The node whose agent process listens on the rendezvous port (hosts the TCPStore)."""
        for node in self.nodes:
            try:
                conns = psutil.Process(node.pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.rdzv_port
                   for c in conns):
                return node
        return None

    def diagnostics(self) -> str:
        return "\n".join(n.diagnostics() for n in self.nodes)

    def wait_all(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        return [n.wait(max(0.1, deadline - time.monotonic())) for n in self.nodes]

    def leftovers(self, timeout: float = 10.0) -> list[psutil.Process]:
        """Processes this cluster started that are still alive ``timeout`` s after the agents.

        Workers die with their agent through the kernel's parent-death signal, which is
        asynchronous; a short grace period tells "dying" from "orphaned".
        """
        deadline = time.monotonic() + timeout
        while True:
            left = marked_processes(self.marker)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)

    # -- tearing down --
    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for node in self.nodes:
            if node.alive():
                node.kill()
                node.proc.wait(10)
        left = self.leftovers()
        for proc in left:
            try:
                proc.kill()
            except psutil.Error:
                pass
        if left and exc_type is None:
            raise AssertionError(
                "orphaned processes: "
                + ", ".join(f"{p.pid} {_cmdline(p)}" for p in left)
            )


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:160]
    except psutil.Error:
        return "?"


def _listening(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _fail(node: Node) -> bool:
    raise AssertionError(f"{node.name} exited early\n{node.diagnostics()}")


def single_node(
    base: Path,
    script: Path | str,
    script_args: Sequence[str] = (),
    nproc_per_node: int = 2,
    max_restarts: int = 0,
    agent_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    metrics_linger: float = 0,
    launcher: Sequence[str] | None = None,
) -> Cluster:
    """A one-node job on its own c10d store (what ``--standalone`` does, with a known port)."""
    return Cluster(
        base, script=script, script_args=script_args, nnodes="1:1",
        nproc_per_node=nproc_per_node, max_restarts=max_restarts,
        rdzv={"join_timeout": 30, "last_call_timeout": 1, "close_timeout": 10, "timeout": 30},
        agent_args=agent_args, env=env, metrics_linger=metrics_linger, launcher=launcher,
    )


# ---- reading a run back --------------------------------------------------------------------


def names(events: Iterable[dict[str, Any]]) -> list[str]:
    return [e["name"] for e in events]


def assert_complete_log(node: Node, end_state: str) -> list[dict[str, Any]]:
    """The log holds one run from run_start to a run_end in ``end_state``; returns the events."""
    events = node.events()
    starts = [e for e in events if e["name"] == "elastiscope.agent.run_start"]
    ends = [e for e in events if e["name"] == "elastiscope.agent.run_end"]
    assert len(starts) == 1, f"run_start events: {len(starts)}\n{node.diagnostics()}"
    assert len(ends) == 1, f"run_end events: {len(ends)}\n{node.diagnostics()}"
    assert ends[0]["metadata"]["state"] == end_state, node.diagnostics()
    assert events.index(starts[0]) < events.index(ends[0])
    return events


def worker_terminal_events(node: Node) -> dict[int, str]:
    """global rank -> final state from torch's per-worker events at the end of the run."""
    final = {}
    for e in node.events():
        if e["source"] != "WORKER" or not e["name"].startswith("torchelastic.worker.status."):
            continue
        state = e["name"].rsplit(".", 1)[1]
        if state in ("SUCCEEDED", "FAILED", "TERMINATED"):
            final[e["metadata"]["global_rank"]] = state
    return final
