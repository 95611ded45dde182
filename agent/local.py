"""LocalElasticAgent: the agent that owns the worker processes of one host.

A drop-in for torch's ``LocalElasticAgent`` (same constructor, same worker environment, same
log layout through torch's ``LogsSpecs``, same ``ProcessFailure``/error files), with the
process layer of :mod:`agent.processes` underneath:

* a worker's exit wakes the run loop at once, whatever ``monitor_interval`` is, and the first
  failure is published live as ``elastiscope.worker.failed`` before the others are stopped;
* workers die with the agent, even when it is SIGKILLed;
* SIGTERM/SIGINT/SIGHUP/SIGQUIT raise torch's ``SignalException`` in the run loop, which stops
  the workers within the shutdown timeout and records the final events;
* each worker's CPU time and resident memory are sampled and published as metrics;
* ``status_snapshot()`` describes the group for the HTTP endpoint, from any thread.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import signal
import threading
import time
from contextlib import contextmanager
from string import Template
from typing import Any
from collections.abc import Iterator

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, LogsSpecs, SignalException
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from agent.api import (
    DEFAULT_ROLE,
    RunResult,
    SimpleElasticAgent,
    WorkerGroup,
    WorkerSpec,
    WorkerState,
    prof,
)
from agent.processes import (
    LogTee,
    ProgramSpawner,
    StandbyPool,
    TeeRoute,
    WorkerLaunch,
    WorkerSet,
    python_invocation,
    read_usage,
    standby_argv,
)
from agent import rendezvous
from telemetry import tracing
from telemetry.events import Event, EventSource, emit
from telemetry.events import put_metric

__all__ = ["LocalElasticAgent", "DEFAULT_SIGNALS_TO_HANDLE"]

logger = logging.getLogger(__name__)

# Same variable and default as torch: which signals turn into a SignalException in the agent.
DEFAULT_SIGNALS_TO_HANDLE = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"
# Standbys start this long after an attempt's workers, so as not to slow their own start-up.
STANDBY_DELAY_S = 0.2
_worker_id = operator.attrgetter("id")


class LocalElasticAgent(SimpleElasticAgent):
    """Runs ``spec.local_world_size`` workers on this host: a program or a Python callable.

    Programs get ``spec.args`` (``${local_rank}`` substituted) and the torchelastic worker
    environment; callables are started with ``start_method`` and their return values land in
    ``RunResult.return_values`` under each worker's global rank. Log files, redirects and tee
    follow ``logs_specs`` (torch's ``DefaultLogsSpecs`` when None); tee'd lines are prefixed
    with ``log_line_prefix_template`` (``${role_name}``, ``${rank}``, ``${local_rank}``),
    ``[<role><local_rank>]:`` by default. ``shutdown_timeout`` is the grace period between
    the stop signal and SIGKILL. ``resource_sample_interval`` is how often (seconds) each
    worker's CPU time and memory are sampled.

    ``warm_standby``: when the workers are this interpreter running a script (or ``-m``
    module) and a restart is possible, keep one standby interpreter per worker started ahead
    of time, so that a restart does not wait for interpreter start-up (see
    :mod:`agent.processes`). Set it False to always start workers cold.

    Run it from the thread that should own the workers (normally the main thread, where the
    termination signals are handled): workers are tied to the life of that thread.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        logs_specs: LogsSpecs | None = None,
        start_method: str = "spawn",
        exit_barrier_timeout: float = 300,
        log_line_prefix_template: str | None = None,
        shutdown_timeout: int = 30,
        resource_sample_interval: float = 5.0,
        warm_standby: bool = True,
    ):
        super().__init__(spec, exit_barrier_timeout, shutdown_timeout)
        self._logs_specs = logs_specs if logs_specs is not None else DefaultLogsSpecs()
        self._start_method = start_method
        self._log_line_prefix_template = log_line_prefix_template
        self._resource_sample_interval = resource_sample_interval
        self._spawner: ProgramSpawner | None = None
        self._warm_standby = warm_standby
        self._standbys: StandbyPool | None = None
        self._standby_due: float | None = None
        self._workers: WorkerSet | None = None
        self._log_tee: LogTee | None = None
        self._next_sample = 0.0
        self._reported_failures: set[int] = set()  # pids already published live
        # The attempt's pids (fixed once started), and whether every worker is still known to
        # run: while it is, a monitor pass that learns of no exit is HEALTHY without looking
        # at each worker (it runs ten times a second for the whole job).
        self._worker_pids: frozenset[int] = frozenset()
        self._all_running = False
        self._looked_for_exits = False
        self._status_lock = threading.Lock()

    # ---- the run -----------------------------------------------------------------------

    def run(self, role: str = DEFAULT_ROLE) -> RunResult:
        with _signals_raise_in_run_loop():
            if isinstance(self._worker_group.spec.entrypoint, str):
                # Boots while the first rendezvous runs instead of after it. A failure here
                # surfaces again, inside the run and its events, when workers start.
                try:
                    self._ensure_spawner()
                except Exception:
                    logger.debug("early spawner start failed", exc_info=True)
            return super().run(role)

    def _ensure_spawner(self) -> ProgramSpawner:
        if self._spawner is None or not self._spawner.alive:
            self._spawner = ProgramSpawner()
            self._standbys = StandbyPool(self._spawner)
        return self._spawner

    # ---- starting ----------------------------------------------------------------------

    @prof
    def _start_workers(self, worker_group: WorkerGroup) -> dict[int, Any]:
        spec = worker_group.spec
        if worker_group.store is None:
            raise AssertionError
        restart_count = spec.max_restarts - self._remaining_restarts
        envs = {
            worker.local_rank: self._worker_env(worker_group, worker, restart_count)
            for worker in worker_group.workers
        }
        # Creates this attempt's log directories and adds TORCHELASTIC_ERROR_FILE to envs.
        logs = self._logs_specs.reify(envs)

        launches = [
            WorkerLaunch(
                local_rank=local_rank,
                entrypoint=spec.entrypoint,
                args=tuple(_substitute_local_rank(spec.args, local_rank)),
                env=env,
                stdout=logs.stdouts[local_rank],
                stderr=logs.stderrs[local_rank],
                error_file=logs.error_files.get(local_rank),
            )
            for local_rank, env in envs.items()
        ]
        self._release_workers()
        spawner = self._ensure_spawner() if isinstance(spec.entrypoint, str) else None
        mp_context = None
        if not isinstance(spec.entrypoint, str):
            import multiprocessing

            mp_context = multiprocessing.get_context(self._start_method)
        workers = WorkerSet.start(
            launches, spawner=spawner, mp_context=mp_context, standbys=self._standbys
        )
        with self._status_lock:
            self._workers = workers
        self._worker_pids = frozenset(workers.pids().values())
        self._all_running = True
        self._looked_for_exits = False
        self._reported_failures = set()
        self._log_tee = self._make_log_tee(worker_group, logs).start()
        self._next_sample = time.monotonic()
        self._plan_standbys(spec)
        return workers.pids()

    def _plan_standbys(self, spec: WorkerSpec) -> None:
        """Schedule standbys for the next attempt if one can happen; dismiss them otherwise."""
        self._standby_due = None
        if self._standbys is None:
            return
        if self._standby_invocation(spec) is None:
            self._standbys.dismiss()
            return
        # Static groups restart only on failure; elastic ones also when membership changes.
        elastic = spec.rdzv_handler.get_backend() != "static"
        if self._remaining_restarts > 0 or elastic:
            self._standby_due = time.monotonic() + STANDBY_DELAY_S
        else:
            self._standbys.dismiss()

    def _standby_invocation(self, spec: WorkerSpec):
        """The Python invocation every local rank shares, or None if standbys do not apply."""
        if not self._warm_standby:
            return None
        invocations = [
            python_invocation(spec.entrypoint, tuple(_substitute_local_rank(spec.args, rank)))
            for rank in range(spec.local_world_size)
        ]
        if any(i is None for i in invocations):
            return None
        if len({tuple(standby_argv(i)) for i in invocations}) != 1:
            return None
        return invocations[0]

    def _fill_standbys(self) -> None:
        self._standby_due = None
        spec = self._worker_group.spec
        invocation = self._standby_invocation(spec)
        if invocation is None or self._standbys is None:
            return
        try:
            self._standbys.fill(invocation, spec.local_world_size)
        except Exception:  # a restart without standbys is only slower
            logger.warning("could not start standby interpreters", exc_info=True)

    def _worker_env(self, worker_group: WorkerGroup, worker, restart_count: int) -> dict[str, str]:
        """The variables a torchrun worker sees, plus TRACEPARENT when tracing is on."""
        spec = worker_group.spec
        env = {
            "RANK": str(worker.global_rank),
            "GROUP_RANK": str(worker_group.group_rank),
            "ROLE_RANK": str(worker.role_rank),
            "ROLE_NAME": spec.role,
            "LOCAL_WORLD_SIZE": str(spec.local_world_size),
            "WORLD_SIZE": str(worker.world_size),
            "GROUP_WORLD_SIZE": str(worker_group.group_world_size),
            "ROLE_WORLD_SIZE": str(worker.role_world_size),
            "MASTER_ADDR": str(worker_group.master_addr),
            "MASTER_PORT": str(worker_group.master_port),
            "TORCHELASTIC_RESTART_COUNT": str(restart_count),
            "TORCHELASTIC_MAX_RESTARTS": str(spec.max_restarts),
            "TORCHELASTIC_RUN_ID": spec.rdzv_handler.get_run_id(),
            "TORCHELASTIC_USE_AGENT_STORE": str(spec.rdzv_handler.use_agent_store),
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": os.getenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
        }
        env.update(_local_rank_env(worker.local_rank, spec.virtual_local_rank))
        if "OMP_NUM_THREADS" in os.environ:
            env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
        traceparent = tracing.traceparent()
        if traceparent:
            env["TRACEPARENT"] = traceparent
        return env

    def _make_log_tee(self, worker_group: WorkerGroup, logs) -> LogTee:
        import sys

        spec = worker_group.spec
        prefixes = {w.local_rank: self._log_prefix(spec.role, w) for w in worker_group.workers}
        filtered = []
        routes = []
        for tee_files, console, filters, filtered_path in (
            (logs.tee_stdouts, sys.stdout, spec.duplicate_stdout_filters, logs.filtered_stdout),
            (logs.tee_stderrs, sys.stderr, spec.duplicate_stderr_filters, logs.filtered_stderr),
        ):
            outputs: list = [(console, None)]
            if filters and tee_files:
                sink = open(filtered_path, "w", errors="replace", buffering=1)  # noqa: SIM115
                filtered.append(sink)
                outputs.append((sink, lambda line, needles=tuple(filters): any(n in line for n in needles)))
            for local_rank, path in tee_files.items():
                routes.append(TeeRoute(path, prefixes[local_rank], outputs))
        return _LogTeeWithFiles(routes, filtered)

    def _log_prefix(self, role: str, worker) -> str:
        if self._log_line_prefix_template is None:
            return f"[{role}{worker.local_rank}]:"
        return Template(self._log_line_prefix_template).safe_substitute(
            role_name=role, rank=worker.global_rank, local_rank=worker.local_rank
        )

    # ---- rendezvous ----------------------------------------------------------------------

    def _rendezvous(self, worker_group: WorkerGroup) -> None:
        # Fast event names; and a one-node rendezvous has nobody to stagger against: no jitter.
        with rendezvous.joining(worker_group.spec.rdzv_handler):
            super()._rendezvous(worker_group)

    # ---- watching ----------------------------------------------------------------------

    def _wait_for_change(self, interval: float) -> None:
        """Return after ``interval``, or as soon as a worker exits; sample resources when due."""
        workers = self._workers
        if workers is None:
            time.sleep(interval)
            return
        # Runs ten times a second for the whole job: in the common case one wait, and chores
        # (standbys, resource samples) only when one is due.
        now = time.monotonic()
        deadline = now + interval
        while True:
            if now >= self._next_sample or (self._standby_due is not None and now >= self._standby_due):
                self._do_due_chores(workers, now)
            wake = self._next_sample
            if self._standby_due is not None and self._standby_due < wake:
                wake = self._standby_due
            waited = wake > now
            if waited and workers.wait(min(wake, deadline) - now):
                return
            now = time.monotonic()
            if now >= deadline:
                # The wait has just looked for exits and found none, so the monitor pass
                # that follows need not look again. An exit in between is not delayed: it
                # makes the next wait return at once.
                self._looked_for_exits = waited
                return

    def _do_due_chores(self, workers: WorkerSet, now: float) -> None:
        if self._standby_due is not None and now >= self._standby_due:
            self._fill_standbys()
        if now >= self._next_sample:
            self._sample_resources(workers)
            self._next_sample = now + self._resource_sample_interval

    @prof
    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        workers = self._workers
        if workers is None:
            raise AssertionError
        expected = set(map(_worker_id, worker_group.workers))
        if expected != self._worker_pids:
            logger.error(
                "[%s] worker pids do not match the running processes. Expected: %s, actual: %s",
                worker_group.spec.role, expected, set(self._worker_pids),
            )
            return RunResult(state=WorkerState.UNKNOWN)

        if self._looked_for_exits:
            self._looked_for_exits = False
        elif workers.collect():
            self._all_running = False
        if self._all_running:
            return RunResult(state=WorkerState.HEALTHY)
        role = worker_group.spec.role
        failed = [w for w in workers.workers if w.failed]
        if failed:
            newly_failed = [w for w in failed if w.pid not in self._reported_failures]
            failures = {}
            for proc in failed:
                failure = _process_failure(proc)
                failures[worker_group.workers[proc.local_rank].global_rank] = failure
                if proc in newly_failed:
                    self._reported_failures.add(proc.pid)
                    self._emit_worker_failed(worker_group, proc, failure)
            if newly_failed:
                summary = ", ".join(f"local_rank {p.local_rank} exitcode {p.exit_code}" for p in newly_failed)
                logger.error("[%s] worker(s) failed: %s; stopping the others", role, summary)
                self._stop_processes(signal.SIGTERM, self._shutdown_timeout)
            return RunResult(state=WorkerState.FAILED, failures=failures)

        if all(not w.running for w in workers.workers):
            self._stop_log_tee()
            return_values = {
                worker_group.workers[proc.local_rank].global_rank: workers.return_value(proc)
                for proc in workers.workers
            }
            return RunResult(state=WorkerState.SUCCEEDED, return_values=return_values)
        return RunResult(state=WorkerState.HEALTHY)

    def _emit_worker_failed(self, worker_group: WorkerGroup, proc, failure: ProcessFailure) -> None:
        """Publish a failure the moment it is seen, not at the end of the run like torch's events."""
        try:
            worker = worker_group.workers[proc.local_rank]
            signal_name = failure.signal_name() if failure.exitcode < 0 else None
            message = failure.message
            if isinstance(message, dict):
                message = message.get("message", json.dumps(message))
            metadata = self._identity()
            metadata.update(
                global_rank=worker.global_rank,
                local_rank=proc.local_rank,
                role_rank=worker.role_rank,
                worker_id=str(proc.pid),
                state="FAILED",
                exit_code=failure.exitcode,
                signal=signal_name if signal_name != "<N/A>" else None,
                worker_pid=proc.pid,
                error_message=str(message),
                raw_error=json.dumps(failure.error_file_data),
                detect_latency_ms=round(max(0.0, time.time() - proc.exited_at) * 1000, 3),
                agent_restarts=worker_group.spec.max_restarts - self._remaining_restarts,
            )
            emit(Event("elastiscope.worker.failed", EventSource.WORKER, metadata=metadata))
        except Exception:
            logger.debug("could not emit elastiscope.worker.failed", exc_info=True)

    def _sample_resources(self, workers: WorkerSet) -> None:
        role = self._worker_group.spec.role
        for proc in workers.workers:
            if not proc.running:
                continue
            usage = read_usage(proc.pid)
            if usage is None:
                continue
            proc.cpu_seconds, proc.rss_bytes = usage
            put_metric(f"workers.{role}.worker.{proc.local_rank}.cpu_seconds", proc.cpu_seconds)
            put_metric(f"workers.{role}.worker.{proc.local_rank}.rss_bytes", proc.rss_bytes)

    # ---- stopping ----------------------------------------------------------------------

    @prof
    def _stop_workers(self, worker_group: WorkerGroup) -> None:
        self._stop_processes(signal.SIGTERM, self._shutdown_timeout)

    def _shutdown(self, death_sig: signal.Signals = signal.SIGTERM, timeout: float | None = None) -> None:
        grace = self._shutdown_timeout if timeout is None else timeout
        try:
            self._stop_processes(death_sig, grace)
        finally:
            self._release_workers()
            self._standby_due = None
            if self._spawner is not None:
                self._spawner.close()  # its standbys exit with it
                self._spawner = None
                self._standbys = None

    def _stop_processes(self, death_sig: signal.Signals, grace: float) -> None:
        workers = self._workers
        self._all_running = False
        if workers is not None:
            workers.stop(death_sig, grace)
        self._stop_log_tee()

    def _stop_log_tee(self) -> None:
        tee, self._log_tee = self._log_tee, None
        if tee is not None:
            tee.stop()

    def _release_workers(self) -> None:
        """Close the previous attempt's handles (its workers are already stopped)."""
        self._stop_log_tee()
        if self._workers is not None:
            self._workers.close()

    # ---- status ------------------------------------------------------------------------

    def status_snapshot(self) -> dict[str, Any]:
        """The group and its workers as plain data; safe and cheap to call from any thread."""
        group = self._worker_group
        spec = group.spec
        with self._status_lock:
            workers = self._workers
        procs = {p.local_rank: p for p in workers.workers} if workers is not None else {}
        try:
            run_id = spec.rdzv_handler.get_run_id()
        except Exception:
            run_id = None
        members = list(group.workers)
        remaining = self._remaining_restarts
        return {
            "run_id": run_id,
            "role": spec.role,
            "state": group.state.value,
            "restarts_used": spec.max_restarts - remaining,
            "remaining_restarts": remaining,
            "max_restarts": spec.max_restarts,
            "group_rank": group.group_rank,
            "group_world_size": group.group_world_size,
            "world_size": members[0].world_size if members and members[0].world_size >= 0 else None,
            "workers": [_worker_status(w, procs.get(w.local_rank)) for w in members],
        }


class _LogTeeWithFiles(LogTee):
    """A LogTee that also owns the files holding the filtered copies (closed on stop)."""

    def __init__(self, routes: list[TeeRoute], owned: list) -> None:
        super().__init__(routes)
        self._owned = owned

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        for f in self._owned:
            f.close()
        self._owned = []


def _worker_status(worker, proc) -> dict[str, Any]:
    if proc is None:
        state, pid, start, code, cpu, rss = "INIT", None, None, None, None, None
    else:
        if proc.running:
            state = "HEALTHY"
        elif proc.exit_code == 0:
            state = "SUCCEEDED"
        elif proc.stopped_by_agent:
            state = "TERMINATED"
        else:
            state = "FAILED"
        pid, start, code = proc.pid, proc.started_at, proc.exit_code
        cpu, rss = proc.cpu_seconds, proc.rss_bytes
    return {
        "local_rank": worker.local_rank,
        "global_rank": worker.global_rank,
        "role_rank": worker.role_rank,
        "pid": pid,
        "state": state,
        "start_time": start,
        "exit_code": code,
        "cpu_seconds": cpu,
        "rss_bytes": rss,
    }


def _process_failure(proc) -> ProcessFailure:
    """torch's ProcessFailure for an exited worker; reads its error file once."""
    if proc.failure is not None:
        return proc.failure
    error_file = proc.launch.error_file or "<N/A>"
    try:
        failure = ProcessFailure(proc.local_rank, proc.pid, proc.exit_code, error_file)
    except Exception:  # an unreadable error file must not hide the failure itself
        logger.warning("could not read error file %s", error_file, exc_info=True)
        failure = ProcessFailure(proc.local_rank, proc.pid, proc.exit_code, "<N/A>")
    proc.failure = failure
    return failure


def _substitute_local_rank(args: tuple, local_rank: int) -> list:
    """torch's ``${local_rank}`` macro in string arguments; other arguments pass through."""
    return [
        Template(a).safe_substitute(local_rank=str(local_rank)) if isinstance(a, str) else a
        for a in args
    ]


def _local_rank_env(local_rank: int, virtual_local_rank: bool) -> dict[str, str]:
    """LOCAL_RANK and CUDA_VISIBLE_DEVICES as torch sets them.

    With ``virtual_local_rank`` each worker sees only its own device, as device 0.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not virtual_local_rank:
        env = {"LOCAL_RANK": str(local_rank)}
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        return env
    if visible is None:
        device = str(local_rank)
    else:
        devices = visible.split(",")
        if local_rank >= len(devices):
            raise ValueError(
                f"local_rank {local_rank} exceeds available GPUs in CUDA_VISIBLE_DEVICES={visible}"
            )
        device = devices[local_rank].strip()
    return {"LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": device}


def _raise_signal_exception(signum: int, frame: Any) -> None:
    sigval = signal.Signals(signum)
    raise SignalException(f"Process {os.getpid()} got signal: {sigval}", sigval=sigval)


@contextmanager
def _signals_raise_in_run_loop() -> Iterator[None]:
    """Turn termination signals into SignalException in this (the main) thread while running.

    ``SimpleElasticAgent.run`` catches it, stops the workers with the same signal and
    re-raises, so the caller exits non-zero with its final events recorded. The previous
    handlers come back afterwards (agents embedded in a larger program, tests).
    """
    if threading.current_thread() is not threading.main_thread():
        logger.warning(
            "agent running outside the main thread: termination signals are not handled, and "
            "workers are stopped only when run() returns or the process dies"
        )
        yield
        return
    names = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE", DEFAULT_SIGNALS_TO_HANDLE)
    previous = {}
    for name in names.split(","):
        sig = getattr(signal, name.strip(), None)
        if not isinstance(sig, signal.Signals):
            logger.warning("unknown signal %r in TORCHELASTIC_SIGNALS_TO_HANDLE", name)
            continue
        try:
            previous[sig] = signal.signal(sig, _raise_signal_exception)
        except (ValueError, OSError):
            logger.warning("cannot handle %s", name, exc_info=True)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
