"""The local agent's worker group as plain data, for the HTTP endpoint's status route."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from agent.api import WorkerGroup, WorkerState
from agent.processes import WorkerProcess, WorkerSet
from telemetry.names import TERMINATED

__all__ = ["WorkerMarks", "group_status", "worker_status"]


@dataclass(frozen=True)
class WorkerMarks:
    """The local ranks the detectors mark now: stragglers (agent/stragglers.py) and stalled
    workers (agent/stalls.py). Built from copies, so the status thread never iterates the
    monitor's own collections."""

    stragglers: frozenset[int] = frozenset()
    stalled: frozenset[int] = frozenset()

    @classmethod
    def read(cls, stragglers: Callable[[], Iterable[int]], stalled: Callable[[], Iterable[int]]) -> WorkerMarks:
        """The marks as the detectors give them; none where one is mid-change (a copy raced
        the monitor thread), since a status must never fail for a mark."""
        try:
            return cls(frozenset(stragglers()), frozenset(stalled()))
        except RuntimeError:  # "changed size during iteration": the next status will have it
            return cls()

    def of(self, local_rank: int) -> dict[str, bool]:
        return {"straggler": local_rank in self.stragglers, "stalled": local_rank in self.stalled}

def group_status(group: WorkerGroup, workers: WorkerSet | None, remaining_restarts: int,
                 progress: dict[int, dict[str, Any]] | None = None,
                 marks: WorkerMarks | None = None) -> dict[str, Any]:
    """The group and its workers' processes (``workers``, None before the first start), with
    each worker's progress (by local rank) when the agent reads it, and its straggler and
    stall ``marks`` when the agent has detectors."""
    spec = group.spec
    procs = {p.local_rank: p for p in workers.workers} if workers is not None else {}
    try:
        run_id = spec.rdzv_handler.get_run_id()
    except Exception:
        run_id = None
    members = list(group.workers)
    return {
        "run_id": run_id,
        "role": spec.role,
        "state": group.state.value,
        "restarts_used": spec.max_restarts - remaining_restarts,
        "remaining_restarts": remaining_restarts,
        "max_restarts": spec.max_restarts,
        "group_rank": group.group_rank,
        "group_world_size": group.group_world_size,
        "world_size": members[0].world_size if members and members[0].world_size >= 0 else None,
        "workers": [{**worker_status(w, procs.get(w.local_rank), (progress or {}).get(w.local_rank)),
                     **(marks.of(w.local_rank) if marks is not None else {})}
                    for w in members],
    }


def worker_status(worker: Any, proc: WorkerProcess | None,
                  progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """One worker (torch's ``Worker``) and its process, if it was started; ``progress`` is
    ``{"reporting": False}`` for a worker that has not reported progress (not a stalled one)."""
    if proc is None:
        state, pid, start, code, cpu, rss = WorkerState.INIT.value, None, None, None, None, None
    else:
        state = _process_state(proc)
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
        "progress": progress,
    }


def _process_state(proc: WorkerProcess) -> str:
    if proc.running:
        return WorkerState.HEALTHY.value
    if proc.exit_code == 0:
        return WorkerState.SUCCEEDED.value
    if proc.stopped_by_agent:
        return TERMINATED
    return WorkerState.FAILED.value
