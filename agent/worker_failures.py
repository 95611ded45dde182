"""A failed worker of the local agent: torch's ``ProcessFailure`` for it, and the live
``elastiscope.worker.failed`` event published the moment the failure is seen (torch's own
events come only at the end of the run)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from agent.api import WorkerGroup, WorkerState
from agent.processes import WorkerProcess
from telemetry import names
from telemetry.events import emit
from telemetry.records import Event, EventSource

__all__ = ["process_failure", "emit_worker_failed"]

logger = logging.getLogger(__name__)


def process_failure(proc: WorkerProcess) -> ProcessFailure:
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


def emit_worker_failed(
    worker_group: WorkerGroup,
    proc: WorkerProcess,
    failure: ProcessFailure,
    identity: dict[str, Any],
    agent_restarts: int,
) -> None:
    """Publish ``elastiscope.worker.failed`` for ``proc``; ``identity`` is the agent's own
    fields on its events. Never raises: a failure must be handled even if it cannot be told."""
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
        emit(Event(names.WORKER_FAILED, EventSource.WORKER, metadata=metadata))
    except Exception:
        logger.debug("could not emit %s", names.WORKER_FAILED, exc_info=True)
