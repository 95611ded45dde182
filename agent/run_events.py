"""Elastiscope's own events about an agent's run (not torch's: those stay in ``agent.api``).

run start and end, each restart and why, each state change of the worker group, each completed
rendezvous. They travel on ``telemetry.events.emit``, apart from the ``record``/``put_metric``
calls torch's agent makes, so that code counting torch's calls sees torch's counts. docs/reference.md
lists every field. Emitting never raises: a broken handler or sink must not stop the run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from agent.hostname import fq_hostname
from agent.python_cmdline import parse_python_args
from telemetry import names
from telemetry.version import __version__
from telemetry.events import emit
from telemetry.records import Event, EventSource

if TYPE_CHECKING:  # annotations only: agent.api imports this module
    from agent.api import WorkerGroup, WorkerState

__all__ = [
    "OUTCOME_ERROR",
    "OUTCOME_GRACEFUL_EXIT",
    "OUTCOME_SIGNALED",
    "identity",
    "emit_agent_event",
    "run_start",
    "run_end",
    "restart",
    "rendezvous_complete",
    "state_change",
    "program_name",
]

logger = logging.getLogger(__name__)

# How a run ended when it returned no RunResult (run_end's ``state``; otherwise the result's state).
OUTCOME_ERROR = "ERROR"
OUTCOME_GRACEFUL_EXIT = "GRACEFUL_EXIT"
OUTCOME_SIGNALED = "SIGNALED"


def identity(group: WorkerGroup) -> dict[str, Any]:
    """run_id, role, group_rank, rdzv_backend and hostname: who is speaking, on every agent event.

    Tolerates a spec without a usable rendezvous handler (run_id and backend are then None).
    """
    spec = group.spec
    handler = spec.rdzv_handler
    try:
        run_id, backend = handler.get_run_id(), handler.get_backend()
    except Exception:
        run_id, backend = None, None
    return {
        "run_id": run_id,
        "role": spec.role,
        "group_rank": group.group_rank,
        "rdzv_backend": backend,
        "hostname": fq_hostname(),
    }


def worker_identity(group: WorkerGroup, local_rank: int) -> dict[str, Any]:
    """Who a worker is, for an event the agent publishes about it: the group's identity, the
    worker's global rank (None if the group has no such worker) and its local rank."""
    fields = identity(group)
    worker = next((w for w in group.workers if w.local_rank == local_rank), None)
    fields.update(global_rank=worker.global_rank if worker is not None else None, local_rank=local_rank)
    return fields


def emit_agent_event(group: WorkerGroup, kind: str, **metadata: Any) -> None:
    """Emit an AGENT event of ``kind``: the group's identity, then ``metadata``."""
    try:
        fields = identity(group)
        fields.update(metadata)
        emit(Event(kind, EventSource.AGENT, metadata=fields))
    except Exception:
        logger.debug("could not emit %s", kind, exc_info=True)


def run_start(group: WorkerGroup) -> None:
    spec = group.spec
    try:
        entrypoint = spec.get_entrypoint_name()
    except Exception:
        entrypoint = None
    emit_agent_event(
        group,
        names.RUN_START,
        entry_point=entrypoint,
        program=program_name(spec.entrypoint, spec.args),
        local_world_size=spec.local_world_size,
        max_restarts=spec.max_restarts,
        monitor_interval=spec.monitor_interval,
        version=__version__,
        pid=os.getpid(),
    )


def run_end(
    group: WorkerGroup, outcome: str, total_run_time: int, remaining_restarts: int,
    attribution: Mapping[str, Any] | None = None, summary: Mapping[str, Any] | None = None,
) -> None:
    """``outcome``: the final WorkerState's value, or one of the OUTCOME_* of this module;
    ``attribution``: the job's root cause, when a failure named one (``root_cause_*`` fields);
    ``summary``: more fields the agent adds (the local agent's goodput)."""
    emit_agent_event(
        group,
        names.RUN_END,
        state=outcome,
        total_run_time=total_run_time,
        agent_restarts=group.spec.max_restarts - remaining_restarts,
        remaining_restarts=remaining_restarts,
        **(attribution or {}),
        **(summary or {}),
    )


def restart(
    group: WorkerGroup,
    reason: str,
    remaining_restarts: int,
    failed_ranks: Iterable[int] = (),
    nodes_waiting: int = 0,
    attribution: Mapping[str, Any] | None = None,
) -> None:
    """``reason``: ``names.RESTART_FAILURE`` or ``names.RESTART_MEMBERSHIP``; ``attribution``:
    the job's root cause of a failure restart (``root_cause_*`` fields)."""
    max_restarts = group.spec.max_restarts
    emit_agent_event(
        group,
        names.RESTART,
        reason=reason,
        remaining_restarts=remaining_restarts,
        max_restarts=max_restarts,
        agent_restarts=max_restarts - remaining_restarts,
        nodes_waiting=nodes_waiting,
        failed_ranks=json.dumps(sorted(failed_ranks)),
        **(attribution or {}),
    )


def rendezvous_complete(group: WorkerGroup, previous_world_size: int, restart_count: int) -> None:
    """After the group took its ranks from a rendezvous round: the world it joined."""
    workers = group.workers
    emit_agent_event(
        group,
        names.RENDEZVOUS_COMPLETE,
        group_world_size=group.group_world_size,
        world_size=workers[0].world_size if workers else 0,
        previous_world_size=previous_world_size,
        master_addr=str(group.master_addr),
        master_port=group.master_port,
        restart_count=restart_count,
    )


def state_change(group: WorkerGroup, old: WorkerState, new: WorkerState) -> None:
    # Not through emit_agent_event: a state change carries only the group's run, role and rank
    # and the two states (no hostname, no backend), and a spec without a handler is not an error.
    try:
        handler = group.spec.rdzv_handler
        run_id = handler.get_run_id() if handler is not None else None
        emit(
            Event(
                names.STATE_CHANGE,
                EventSource.AGENT,
                metadata={
                    "run_id": run_id,
                    "role": group.spec.role,
                    "group_rank": group.group_rank,
                    "state": getattr(new, "value", str(new)),
                    "previous_state": getattr(old, "value", str(old)),
                },
            )
        )
    except Exception:
        logger.debug("could not emit a state change", exc_info=True)


def program_name(entrypoint: Any, args: tuple) -> str | None:
    """What the workers run, for a person reading a timeline: a Python worker's script (or
    ``-m module``), another program's name, a callable's qualified name. Never the arguments,
    which can hold anything."""
    try:
        if not isinstance(entrypoint, str):
            return getattr(entrypoint, "__qualname__", None) or getattr(entrypoint, "__name__", None)
        name = os.path.basename(entrypoint)
        if not name.startswith("python"):
            return name
        return parse_python_args(args).label or name
    except Exception:
        return None
