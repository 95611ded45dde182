"""A failed worker of the local agent: torch's ``ProcessFailure`` for it with a reason a person
can act on, the job-wide root cause, and the live ``elastiscope.worker.failed`` event published
the moment the failure is seen (torch's own events come only at the end of the run).

The reason: the error file's message when the worker wrote one (torch's ``@record``);
otherwise, for a signal, "killed by SIGKILL" (and the OOM killer when the machine says so), and
for an exit code, the last non-empty line the worker wrote to stderr. The tail of its stderr
(bounded) travels in the event either way.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from agent.api import WorkerGroup, WorkerState
from agent.processes import WorkerLaunch, WorkerProcess
from agent.processes.oom_watch import killed_by_oom, oom_kill_count
from agent.processes.stderr_tail import StderrRelay, file_tail, last_line
from agent.root_cause import FailureBoard, PublishedFailure, attribution_fields, first_failure
from telemetry import names
from telemetry.events import emit
from telemetry.records import Event, EventSource

__all__ = ["process_failure", "failure_reason", "emit_worker_failed", "failed_at", "FailureReporter"]

logger = logging.getLogger(__name__)


def failure_reason(exit_code: int, stderr_tail: str, oom: bool = False) -> str | None:
    """The reason of a failure that left no error file; None when nothing better than torch's
    own message is known."""
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"killed by {name}" + (" (out of memory: the kernel's OOM killer)" if oom else "")
    return last_line(stderr_tail)


def process_failure(proc: WorkerProcess, stderr_tail: str = "", oom: bool = False) -> ProcessFailure:
    """torch's ProcessFailure for an exited worker; reads its error file once. Without an error
    file, its message is the reason :func:`failure_reason` gives (when there is one)."""
    if proc.failure is not None:
        return proc.failure
    error_file = proc.launch.error_file or "<N/A>"
    try:
        failure = ProcessFailure(proc.local_rank, proc.pid, proc.exit_code, error_file)
    except Exception:  # an unreadable error file must not hide the failure itself
        logger.warning("could not read error file %s", error_file, exc_info=True)
        failure = ProcessFailure(proc.local_rank, proc.pid, proc.exit_code, "<N/A>")
    if not os.path.isfile(failure.error_file):  # torch's message is then a generic hint
        reason = failure_reason(failure.exitcode, stderr_tail, oom)
        if reason:
            failure.message = reason
    proc.failure = failure
    return failure


def failed_at(proc: WorkerProcess) -> float:
    """When a failed worker failed, as closely as the agent can tell: its error file's time
    when it wrote one (torch's ``@record`` writes it as the exception leaves the script, before
    the interpreter's slow exit), else its exit."""
    exited = proc.exited_at or time.time()
    try:
        written = os.stat(proc.launch.error_file).st_mtime if proc.launch.error_file else None
    except OSError:
        written = None
    if written is None or written < proc.started_at:  # none, or left by someone before it
        return exited
    return min(written, exited)


def log_paths(launch: WorkerLaunch) -> dict[str, str | None]:
    """The worker's output files, when its output goes to files (not the console, not null)."""
    def real(path: str) -> str | None:
        return path if path and path != os.devnull and os.path.isfile(path) else None

    return {"stdout_log": real(launch.stdout), "stderr_log": real(launch.stderr)}


def emit_worker_failed(
    worker_group: WorkerGroup,
    proc: WorkerProcess,
    failure: ProcessFailure,
    identity: dict[str, Any],
    agent_restarts: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Publish ``elastiscope.worker.failed`` for ``proc``; ``identity`` is the agent's own
    fields on its events, ``extra`` more metadata (tail, log paths, root cause). Never raises:
    a failure must be handled even if it cannot be told."""
    try:
        worker = worker_group.workers[proc.local_rank]
        signal_name = failure.signal_name() if failure.exitcode < 0 else None
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", json.dumps(message))
        metadata = dict(identity)
        metadata.update(
            global_rank=worker.global_rank,
            local_rank=proc.local_rank,
            role_rank=worker.role_rank,
            worker_id=str(proc.pid),
            state=WorkerState.FAILED.value,
            exit_code=failure.exitcode,
            signal=signal_name if signal_name != "<N/A>" else None,
            worker_pid=proc.pid,
            error_message=str(message),
            raw_error=json.dumps(failure.error_file_data),
            detect_latency_ms=round(max(0.0, time.time() - proc.exited_at) * 1000, 3),
            agent_restarts=agent_restarts,
        )
        metadata.update(extra or {})
        emit(Event(names.WORKER_FAILED, EventSource.WORKER, metadata=metadata))
    except Exception:
        logger.debug("could not emit %s", names.WORKER_FAILED, exc_info=True)


class FailureReporter:
    """The local agent's failures of one attempt: their reasons, their publication on the job's
    store, the root cause, and one live event per failed worker.

    ``begin`` at each attempt's start (it may rewrite the launches' shared stderr to the
    relay's pipes), ``report`` from the monitor, ``end`` when the attempt's workers are gone.
    """

    def __init__(self) -> None:
        self._relay: StderrRelay | None = None
        self._board: FailureBoard | None = None
        self._reported: set[int] = set()  # pids already published
        self._oom_baseline: int | None = None
        self.root_cause: PublishedFailure | None = None

    def begin(self, worker_group: WorkerGroup, launches: list[WorkerLaunch], restart_count: int) -> None:
        self.end()
        self._reported = set()
        self.root_cause = None
        self._oom_baseline = oom_kill_count()
        shared = [launch for launch in launches if launch.stderr == ""]
        if shared:
            try:
                self._relay = StderrRelay([launch.local_rank for launch in shared]).start()
                for launch in shared:
                    launch.stderr = self._relay.path(launch.local_rank)
            except OSError:  # no FIFOs here: workers share the console, failures have no tail
                logger.warning("could not set up the stderr relay", exc_info=True)
                self._relay = None
        handler = worker_group.spec.rdzv_handler
        try:
            run_id, backend = handler.get_run_id(), handler.get_backend()
        except Exception:
            run_id, backend = None, None
        self._board = None
        if worker_group.store is not None:
            self._board = FailureBoard(
                worker_group.store, FailureBoard.prefix_for(run_id, backend, restart_count),
                worker_group.group_rank, worker_group.group_world_size,
            )

    def end(self) -> None:
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.close()

    def stderr_tail(self, proc: WorkerProcess) -> str:
        if self._relay is not None and proc.launch.stderr == self._relay.path(proc.local_rank):
            return self._relay.tail(proc.local_rank)
        if log_paths(proc.launch)["stderr_log"]:
            return file_tail(proc.launch.stderr)
        return ""

    def report(
        self, worker_group: WorkerGroup, failed: list[WorkerProcess], identity: dict[str, Any],
        agent_restarts: int,
    ) -> tuple[dict[int, ProcessFailure], list[WorkerProcess]]:
        """Every failed worker's ProcessFailure by global rank, and the ones new since the last
        call; the new ones are published, attributed and told as events."""
        new = [proc for proc in failed if proc.pid not in self._reported]
        seen_at = time.time()  # before the root cause is settled: that wait is not detection
        tails = {proc.pid: self.stderr_tail(proc) for proc in new}
        failures = {}
        for proc in failed:
            oom = proc in new and proc.exit_code == -signal.SIGKILL and killed_by_oom(proc.pid, self._oom_baseline)
            failure = process_failure(proc, tails.get(proc.pid, ""), oom)
            failures[worker_group.workers[proc.local_rank].global_rank] = failure
        if not new:
            return failures, new
        self._reported.update(proc.pid for proc in new)
        self.root_cause = self._attribute(worker_group, new, failures, identity.get("hostname", ""))
        for proc in new:
            global_rank = worker_group.workers[proc.local_rank].global_rank
            extra = {"stderr_tail": tails[proc.pid], **log_paths(proc.launch),
                     "detect_latency_ms": round(max(0.0, seen_at - proc.exited_at) * 1000, 3)}
            extra.update(attribution_fields(self.root_cause, global_rank))
            emit_worker_failed(worker_group, proc, failures[global_rank], identity, agent_restarts, extra)
        return failures, new

    def _attribute(
        self, worker_group: WorkerGroup, new: list[WorkerProcess],
        failures: dict[int, ProcessFailure], hostname: str,
    ) -> PublishedFailure | None:
        published = []
        for proc in new:
            global_rank = worker_group.workers[proc.local_rank].global_rank
            message = failures[global_rank].message
            if isinstance(message, dict):
                message = message.get("message", json.dumps(message))
            line = last_line(str(message)) or ""
            published.append(PublishedFailure(
                global_rank, proc.exited_at or time.time(), line, hostname, worker_group.group_rank,
            ))
        if self._board is None:
            return first_failure(published + ([self.root_cause] if self.root_cause else []))
        self._board.publish(published)
        return self._board.settle(since=min(f.time for f in published))

    def attribution(self) -> dict[str, Any]:
        """The root-cause fields for restart and run-end events: the attempt's root cause, also
        when none of this node's workers failed (they were stopped, or a peer's failure made
        the group re-form) but another agent published one; empty when nobody failed."""
        if self.root_cause is None and self._board is not None:
            return attribution_fields(first_failure(self._board.read()))
        return attribution_fields(self.root_cause)
