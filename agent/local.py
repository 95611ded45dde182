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

import logging
import math
import multiprocessing
import operator
import os
import signal
import threading
import time
from typing import Any

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, LogsSpecs

from agent import rendezvous, run_events
from agent.api import DEFAULT_ROLE, RunResult, SimpleElasticAgent, WorkerGroup, WorkerSpec, WorkerState, prof
from agent.processes import (
    LogTee,
    ProgramSpawner,
    StandbyPool,
    WorkerLaunch,
    WorkerSet,
    publish_usage,
    shared_invocation,
)
from agent.goodput import GoodputView
from agent.progress import SITE_DIR, ProgressChannels, ProgressMetrics
from agent.stall_watch import StallFound, StallWatch, dump_file_for, log_folder
from agent.stalls import StallPolicy
from agent.signals import DEFAULT_SIGNALS_TO_HANDLE, signals_raise_in_run_loop
from agent.standby_preload import DEFAULT_MEMORY_LIMIT, StandbyPreload
from agent.stragglers import DEFAULT_STEPS, DEFAULT_THRESHOLD, StragglerDetector
from agent.worker_env import progress_env, stack_dump_env, substitute_local_rank, worker_env
from agent.worker_failures import FailureReporter, failed_at
from agent.worker_logs import log_tee_for
from agent.worker_status import WorkerMarks, group_status
from agent.local_names import (  # torch's module offers them: code imports and patches them here
    TORCHELASTIC_ENABLE_FILE_TIMER,
    TORCHELASTIC_HEALTH_CHECK_PORT,
    TORCHELASTIC_TIMER_FILE,
    TORCHELASTIC_UNINTERRUPTIBLE_STATE_TIMEOUT,
    start_processes,
)
from telemetry import names

__all__ = [
    "LocalElasticAgent",
    "DEFAULT_SIGNALS_TO_HANDLE",
    "TORCHELASTIC_ENABLE_FILE_TIMER",
    "TORCHELASTIC_TIMER_FILE",
    "TORCHELASTIC_HEALTH_CHECK_PORT",
    "TORCHELASTIC_UNINTERRUPTIBLE_STATE_TIMEOUT",
    "start_processes",
]

logger = logging.getLogger(__name__)

# Standbys start this long after an attempt's workers, so as not to slow their own start-up.
STANDBY_DELAY_S = 0.2
# While it is not known whether the workers use torch, look again after this long, doubling
# up to the cap (reading their memory maps is cheap, but not free for the whole job).
PRELOAD_RECHECK_S = (0.5, 30.0)
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

    ``warm_standby``, ``preload``, ``preload_torch``, ``standby_memory_limit``: standby
    interpreters started ahead for the next attempt, and what they import while they wait
    (:mod:`agent.processes.standby`, :mod:`agent.standby_preload`). ``count_optimizer_steps``:
    every ``optimizer.step()`` is a training step (:mod:`elastiscope.progress_hook`).
    ``straggler_threshold``, ``straggler_steps``: see :mod:`agent.stragglers`;
    ``stall_policy``: see :mod:`agent.stalls`.

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
        count_optimizer_steps: bool = True,
        preload: tuple[str, ...] = (),
        preload_torch: bool = True,
        standby_memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
        stall_policy: StallPolicy | None = None,
        straggler_threshold: float = DEFAULT_THRESHOLD,
        straggler_steps: int = DEFAULT_STEPS,
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
        self._preload = StandbyPreload(preload, preload_torch, standby_memory_limit)
        self._preload_recheck = PRELOAD_RECHECK_S[0]
        self._standby_envs: list[dict[str, str]] = []  # the attempt's complete worker environments
        self._workers: WorkerSet | None = None
        self._log_tee: LogTee | None = None
        self._next_sample = 0.0
        self._failures = FailureReporter()  # reasons, root cause, live events
        # The attempt's pids (fixed once started), and whether every worker is still known to
        # run: while it is, a monitor pass that learns of no exit is HEALTHY without looking
        # at each worker (it runs ten times a second for the whole job).
        self._worker_pids: frozenset[int] = frozenset()
        self._all_running = False
        self._looked_for_exits = False
        self._status_lock = threading.Lock()
        # Progress records (agent/progress.py, read by the monitor) feed goodput (wall time by reason).
        self._goodput = GoodputView(spec.role, self._publish_agent_event)
        # Stalls (agent/stall_watch.py): found from the same records, acted on by the monitor.
        self._stalls = StallWatch(stall_policy or StallPolicy(), spec.role, self._goodput.stalled)
        self._stall_found: StallFound | None = None
        self._stall_verdict: str | None = None  # what the run loop does with a stall's result
        self._stragglers = StragglerDetector(spec.role, straggler_threshold, straggler_steps,
                                             describe=lambda rank: run_events.worker_identity(self._worker_group, rank))
        self._progress = ProgressChannels(
            [ProgressMetrics(spec.role), self._goodput, self._stalls.detector, self._stragglers])
        self._progress_site = SITE_DIR if count_optimizer_steps else None

    # ---- the run -----------------------------------------------------------------------

    def run(self, role: str = DEFAULT_ROLE) -> RunResult:
        self._goodput.run_started()
        with signals_raise_in_run_loop():
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
        records = self._progress.begin_attempt(restart_count, [w.local_rank for w in worker_group.workers])
        envs = {
            worker.local_rank: {**worker_env(worker_group, worker, restart_count),
                                **progress_env(records.get(worker.local_rank), self._progress_site),
                                **stack_dump_env(dump_file_for(records.get(worker.local_rank)))}
            for worker in worker_group.workers
        }
        # Creates this attempt's log directories and adds TORCHELASTIC_ERROR_FILE to envs.
        logs = self._logs_specs.reify(envs)

        launches = [
            WorkerLaunch(
                local_rank=local_rank,
                entrypoint=spec.entrypoint,
                args=tuple(substitute_local_rank(spec.args, local_rank)),
                env=env,
                stdout=logs.stdouts[local_rank],
                stderr=logs.stderrs[local_rank],
                error_file=logs.error_files.get(local_rank),
            )
            for local_rank, env in envs.items()
        ]
        self._release_workers()
        self._standby_envs = [{**os.environ, **launch.env} for launch in launches]
        self._failures.begin(worker_group, launches, restart_count)
        spawner = self._ensure_spawner() if isinstance(spec.entrypoint, str) else None
        mp_context = None
        if not isinstance(spec.entrypoint, str):
            mp_context = multiprocessing.get_context(self._start_method)
        workers = start_processes(
            launches, spawner=spawner, mp_context=mp_context, standbys=self._standbys
        )
        with self._status_lock:
            self._workers = workers
        self._worker_pids = frozenset(workers.pids().values())
        self._stall_found = None
        self._stalls.begin_attempt(
            restart_count, workers.pids(),
            {lr: dump_file_for(records.get(lr)) for lr in envs},
            {lr: log_folder(logs.error_files.get(lr)) for lr in envs},
            {w.local_rank: w.global_rank for w in worker_group.workers})
        self._all_running = True
        self._looked_for_exits = False
        self._log_tee = log_tee_for(worker_group, logs, self._log_line_prefix_template).start()
        # A stand-in for the process layer (see start_processes) has no processes of ours to read.
        self._next_sample = time.monotonic() if isinstance(workers, WorkerSet) else math.inf
        self._plan_standbys(spec)
        return workers.pids()

    def _plan_standbys(self, spec: WorkerSpec) -> None:
        """Schedule standbys for the next attempt if one can happen; dismiss them otherwise."""
        self._standby_due = None
        self._preload_recheck = PRELOAD_RECHECK_S[0]
        if self._standbys is None:
            return
        if self._standby_invocation(spec) is None:
            self._standbys.dismiss()
            return
        # Static groups restart only on failure; elastic ones also when membership changes,
        # which a rendezvous admitting one node (a --standalone job) never sees.
        handler = spec.rdzv_handler
        elastic = handler.get_backend() != "static" and not rendezvous.admits_one_node(handler)
        if self._remaining_restarts > 0 or elastic:
            self._standby_due = time.monotonic() + STANDBY_DELAY_S
        else:
            self._standbys.dismiss()

    def _standby_invocation(self, spec: WorkerSpec):
        """The Python invocation every local rank shares, or None if standbys do not apply."""
        if not self._warm_standby:
            return None
        args_per_rank = (
            tuple(substitute_local_rank(spec.args, rank)) for rank in range(spec.local_world_size)
        )
        return shared_invocation(spec.entrypoint, args_per_rank)

    def _fill_standbys(self) -> None:
        self._standby_due = None
        spec = self._worker_group.spec
        invocation = self._standby_invocation(spec)
        if invocation is None or self._standbys is None:
            return
        try:
            modules = self._preload.modules(self._worker_pids if self._all_running else ())
            self._standbys.fill(invocation, self._standby_envs, modules)
        except Exception:  # a restart without standbys is only slower
            logger.warning("could not start standby interpreters", exc_info=True)
        if self._preload.undecided and self._all_running:
            # The workers may import torch later: look again, less and less often.
            self._standby_due = time.monotonic() + self._preload_recheck
            self._preload_recheck = min(self._preload_recheck * 2, PRELOAD_RECHECK_S[1])

    # ---- rendezvous ----------------------------------------------------------------------

    def _rendezvous(self, worker_group: WorkerGroup) -> None:
        # Fast event names; and a one-node rendezvous has nobody to stagger against: no jitter.
        with rendezvous.joining(worker_group.spec.rdzv_handler):
            super()._rendezvous(worker_group)

    # ---- watching ----------------------------------------------------------------------

    def _wait_for_change(self, interval: float) -> None:
        """Return after ``interval``, or as soon as a worker exits; sample resources when due."""
        workers = self._workers
        if not isinstance(workers, WorkerSet):  # none yet, or a stand-in (see start_processes)
            time.sleep(interval)
            return
        # Runs ten times a second for the whole job: in the common case one wait, and chores
        # (standbys, resource samples) only when one is due.
        now = time.monotonic()
        if self._progress.poll_due(now):
            changed = self._progress.poll()
            self._stalls.publish(time.time())
            # Only a changed record can end a stall or move a deadline; a deadline that passes
            # with nothing changed is met below, at its moment (stall_due).
            if changed and self._look_for_stalls(workers):
                return
        deadline = now + interval
        stall_due = self._stalls.due_monotonic(now, workers.running_ranks)
        if stall_due is not None and stall_due < deadline:
            deadline = stall_due  # a stall is found at its deadline, not at the next pass
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
            if stall_due is not None and now >= stall_due:
                self._progress.poll()  # the records as they are at the deadline
                if self._look_for_stalls(workers):
                    return
                stall_due = None
            if now >= deadline:
                # The wait has just looked for exits and found none, so the monitor pass
                # that follows need not look again. An exit in between is not delayed: it
                # makes the next wait return at once.
                self._looked_for_exits = waited
                return

    def _look_for_stalls(self, workers: WorkerSet) -> bool:
        """Look for stalls in the records as last read; True when one needs the monitor (the
        policy restarts or fails; a reported stall needs nothing more)."""
        running = workers.running_ranks()
        found = self._stalls.check(lambda: run_events.identity(self._worker_group), running, time.time())
        if found is None or found.action == "report":
            return False
        self._stall_found = found
        # Restart or fail: from here to the next first step is the stall's restart badput.
        self._goodput.interrupted(time.time(), names.RESTART_STALL)
        return True

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
        if self._all_running and self._stall_found is None:
            return RunResult(state=WorkerState.HEALTHY)
        self._progress.poll()  # exits seen: their last steps are in the records now
        role = worker_group.spec.role
        failed = [w for w in workers.workers if w.failed]
        if failed:
            failures, newly_failed = self._failures.report(
                worker_group, failed, run_events.identity(worker_group),
                agent_restarts=worker_group.spec.max_restarts - self._remaining_restarts,
            )
            if newly_failed:
                self._goodput.interrupted(min(map(failed_at, newly_failed)), names.RESTART_FAILURE)
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
        if self._stall_found is not None:
            return self._act_on_stall(worker_group)
        return RunResult(state=WorkerState.HEALTHY)

    def _act_on_stall(self, worker_group: WorkerGroup) -> RunResult:
        """The stall's stacks are kept already; now the policy: a restart with reason stall
        while restarts are left, else stop the workers and fail with the stall as reason."""
        found, self._stall_found = self._stall_found, None
        if found.action == "restart" and self._remaining_restarts > 0:
            self._stall_verdict = "restart"
            return RunResult(state=WorkerState.UNHEALTHY)
        logger.error("[%s] %s; stopping the workers", worker_group.spec.role, found.reason())
        self._stop_processes(signal.SIGTERM, self._shutdown_timeout)
        workers = self._workers
        codes = {worker_group.workers[p.local_rank].global_rank: (p.local_rank, p.pid, p.exit_code)
                 for p in (workers.workers if workers is not None else [])}
        self._stall_verdict = "fail"
        return RunResult(state=WorkerState.FAILED, failures=StallWatch.failures(found, codes))

    def _restart_reason(self, run_result: RunResult) -> str | None:
        verdict, self._stall_verdict = self._stall_verdict, None
        if verdict == "fail":
            return None
        if verdict == "restart":
            return names.RESTART_STALL
        return super()._restart_reason(run_result)

    def _failure_attribution(self) -> dict[str, Any]:
        return self._failures.attribution()

    def _sample_resources(self, workers: WorkerSet) -> None:
        role = self._worker_group.spec.role
        standbys = self._standbys
        if standbys is not None and standbys.preload:
            if self._preload.measure(standbys.pids):
                self._standby_due = time.monotonic()  # refilled bare at the next chore
            self._preload.publish_memory(role)
        publish_usage(role, workers.workers)

    # ---- stopping ----------------------------------------------------------------------

    @prof
    def _stop_workers(self, worker_group: WorkerGroup) -> None:
        self._stop_processes(signal.SIGTERM, self._shutdown_timeout)
        self._progress.end_attempt()  # the workers are gone: their records are final

    def _restart_workers(self, worker_group: WorkerGroup) -> None:
        # A failure was noted when it was seen; a healthy group restarts to let nodes in.
        if worker_group.state == WorkerState.HEALTHY:
            self._goodput.interrupted(time.time(), names.RESTART_MEMBERSHIP)
        super()._restart_workers(worker_group)

    def _run_end_summary(self) -> dict[str, Any]:
        return self._goodput.run_ended()

    def goodput_summary(self) -> dict[str, Any] | None:
        """The run's goodput ratio and whether any worker reported progress (None before a run)."""
        return self._goodput.summary()

    def _publish_agent_event(self, kind: str, **metadata: Any) -> None:
        run_events.emit_agent_event(self._worker_group, kind, **metadata)

    def _shutdown(self, death_sig: signal.Signals = signal.SIGTERM, timeout: float | None = None) -> None:
        grace = self._shutdown_timeout if timeout is None else timeout
        try:
            self._stop_processes(death_sig, grace)
        finally:
            self._release_workers()
            self._progress.close()
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
        self._failures.end()

    # ---- status ------------------------------------------------------------------------

    def status_snapshot(self) -> dict[str, Any]:
        """The group and its workers as plain data; safe and cheap to call from any thread."""
        with self._status_lock:
            workers = self._workers
        marks = WorkerMarks.read(self._stragglers.flagged, lambda: list(self._stalls.detector.stalled))
        return group_status(self._worker_group, workers, self._remaining_restarts, self._progress.status(), marks)

    def stacks_snapshot(self) -> dict[str, Any]:
        """Every running worker's Python stack now (``/stacks``, ``elastiscope stacks``): read
        without stopping anyone, from any thread, in a bounded time."""
        return self._stalls.stacks_now()
