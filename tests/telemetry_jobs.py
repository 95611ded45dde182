"""Real jobs for the telemetry tests: a SimpleElasticAgent that runs each worker as a Python
subprocess, with torch's static rendezvous on 127.0.0.1 (adapted from examples/minimal_agent.py).

Workers are tiny Python programs (no torch import) so a job takes about a second; they get the
torchelastic environment plus TRACEPARENT, like the local agent's workers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid

import torch.distributed.elastic.rendezvous.registry as rdzv_registry
from torch.distributed.elastic.metrics import prof
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.utils.distributed import get_free_port

import pytest

from agent.api import RunResult, SimpleElasticAgent, WorkerSpec, WorkerState
from telemetry import state, tracing

# Local rank 0 fails (exit 3) while RESTART_COUNT < FAIL_ATTEMPTS; everything else succeeds.
FLAKY_WORKER = """
import os, sys
fail = int(os.environ["RESTART_COUNT"]) < int(os.environ["FAIL_ATTEMPTS"]) and os.environ["LOCAL_RANK"] == "0"
sys.exit(3 if fail else 0)
"""


class SubprocessAgent(SimpleElasticAgent):
    """Runs each worker as ``python -c <code>`` with the torchelastic environment."""

    def __init__(self, spec: WorkerSpec, code: str = FLAKY_WORKER, fail_attempts: int = 0,
                 extra_env: dict | None = None):
        super().__init__(spec)
        self._code = code
        self._fail_attempts = fail_attempts
        self._extra_env = extra_env or {}
        self._procs: dict[int, subprocess.Popen] = {}

    @prof
    def _start_workers(self, worker_group):
        spec = worker_group.spec
        restart_count = spec.max_restarts - self._remaining_restarts
        ids = {}
        traceparent = tracing.traceparent()
        for w in worker_group.workers:
            env = dict(
                os.environ, **self._extra_env,
                RANK=str(w.global_rank), LOCAL_RANK=str(w.local_rank), WORLD_SIZE=str(w.world_size),
                MASTER_ADDR=str(worker_group.master_addr), MASTER_PORT=str(worker_group.master_port),
                RESTART_COUNT=str(restart_count), FAIL_ATTEMPTS=str(self._fail_attempts),
                TORCHELASTIC_USE_AGENT_STORE="True",
            )
            if traceparent:
                env["TRACEPARENT"] = traceparent
            p = subprocess.Popen([sys.executable, "-c", self._code], env=env)
            self._procs[w.local_rank] = p
            ids[w.local_rank] = p.pid
        return ids

    @prof
    def _stop_workers(self, worker_group):
        for p in self._procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()

    def _monitor_workers(self, worker_group):
        codes = {w.global_rank: self._procs[w.local_rank].poll() for w in worker_group.workers}
        failures = {r: ProcessFailure(local_rank=r, pid=self._procs[r].pid, exitcode=c, error_file="<none>")
                    for r, c in codes.items() if c not in (None, 0)}
        if failures:
            return RunResult(WorkerState.FAILED, failures=failures)
        if any(c is None for c in codes.values()):
            return RunResult(WorkerState.HEALTHY)
        return RunResult(WorkerState.SUCCEEDED, return_values={r: None for r in codes})

    def _shutdown(self, death_sig=signal.SIGTERM, timeout=30):
        for p in self._procs.values():
            if p.poll() is None:
                p.send_signal(death_sig)
        for p in self._procs.values():
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def make_spec(role: str = "trainer", local_world_size: int = 2, max_restarts: int = 1,
              run_id: str | None = None, backend: str = "static") -> WorkerSpec:
    extra = {"rank": 0} if backend == "static" else {"is_host": True}
    rdzv = rdzv_registry.get_rendezvous_handler(RendezvousParameters(
        backend=backend, endpoint=f"127.0.0.1:{get_free_port()}", run_id=run_id or f"job-{uuid.uuid4().hex[:8]}",
        min_nodes=1, max_nodes=1, local_addr="127.0.0.1", **extra))
    return WorkerSpec(role=role, local_world_size=local_world_size, entrypoint=sys.executable,
                      rdzv_handler=rdzv, max_restarts=max_restarts, monitor_interval=0.05,
                      local_addr="127.0.0.1")


def run_job(fail_attempts: int = 0, max_restarts: int = 1, code: str = FLAKY_WORKER,
            extra_env: dict | None = None, **spec_kw) -> RunResult:
    """Run one real job to the end; ``fail_attempts`` failed attempts come before success."""
    agent = SubprocessAgent(make_spec(max_restarts=max_restarts, **spec_kw), code=code,
                            fail_attempts=fail_attempts, extra_env=extra_env)
    try:
        return agent.run()
    finally:
        handler = agent.get_worker_group().spec.rdzv_handler
        if hasattr(handler, "shutdown"):
            try:
                handler.shutdown()
            except Exception:
                pass


@contextlib.contextmanager
def telemetry_isolation():
    """Fresh telemetry inside; afterwards everything configure() set up is undone (and the torch
    patches an agent applied come out: they register with ``state.undo_on_reset``).

    For module-scoped fixtures, which outlive the reset conftest.py makes after each test.
    """
    state.reset()
    try:
        yield
    finally:
        state.reset()


@pytest.fixture
def isolated_telemetry():
    """Kept for tests written before conftest.py reset telemetry after every test."""
    with telemetry_isolation():
        yield
