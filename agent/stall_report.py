"""What the agent keeps of a stall before it acts: every worker's stack, where each rank is,
the suspects, one file per rank in the run's folder, and the ``elastiscope.worker.stalled``
event (bounded: each stack is cut to ``EVENT_STACK_CHARS``, the files keep them whole).

Also the on-demand dump (``elastiscope stacks``, ``/stacks``): the same capture and reading,
returned as data, with nothing written and nobody stopped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from agent.stack_reading import COLLECTIVE, suspects
from agent.stacks import StackTarget, WorkerStack, capture_stacks
from telemetry import names
from telemetry.events import emit
from telemetry.records import Event, EventSource

__all__ = ["StallReport", "take_stacks", "report_stall", "report_stall_ended", "stacks_payload",
           "EVENT_STACK_CHARS"]

logger = logging.getLogger(__name__)

EVENT_STACK_CHARS = 3000  # per rank, in the event; the per-rank file has the whole dump
FILE_STACK_CHARS = 1 << 20


@dataclass
class StallReport:
    """One capture: each rank's stack by global rank, the suspects, how long it took."""

    stacks: dict[int, WorkerStack]
    local_to_global: dict[int, int]
    suspects: list[int]  # global ranks
    capture_ms: float
    taken_at: float

    def summary(self) -> str:
        """One line a person reads first: the suspects, then who waits where."""
        parts = []
        order = sorted(self.stacks, key=lambda g: (g not in self.suspects, g))
        for rank in order:
            stack = self.stacks[rank]
            mark = "suspect " if rank in self.suspects else ""
            parts.append(f"{mark}rank {rank} {stack.location.describe()}")
        return "; ".join(parts)


def take_stacks(targets: dict[int, StackTarget], local_to_global: dict[int, int]) -> StallReport:
    started = time.monotonic()
    by_local = capture_stacks(targets)
    stacks = {local_to_global.get(lr, lr): s for lr, s in by_local.items()}
    blamed = suspects({rank: s.location for rank, s in stacks.items()})
    return StallReport(stacks, local_to_global, blamed, round((time.monotonic() - started) * 1000, 3),
                       time.time())


def _rank_fields(stack: WorkerStack, since: float | None, taken_at: float) -> dict[str, Any]:
    loc = stack.location
    return {
        "local_rank": stack.local_rank, "pid": stack.pid, "where": loc.where, "detail": loc.detail,
        "code": loc.code.where() if loc.code else None,
        "function": loc.code.function if loc.code else None,
        "method": stack.method, "note": stack.note or None,
        "seconds_since_progress": None if since is None else round(since, 3),
        "last_progress_time": None if since is None else round(taken_at - since, 3),
    }


def _main_stack_text(stack: WorkerStack) -> str:
    lines = []
    for thread in stack.threads:
        if thread.main or len(stack.threads) == 1:
            lines.append(f'Thread "{thread.name}" (most recent call first):')
            lines += [f"  {f.function} ({f.where()})" for f in thread.frames]
    text = "\n".join(lines) or stack.note
    return text if len(text) <= EVENT_STACK_CHARS else text[:EVENT_STACK_CHARS - 15] + "\n  ...(cut)"


def write_rank_files(report: StallReport, folders: dict[int, str], label: str) -> dict[int, str]:
    """Each rank's whole dump into ``<its log folder>/stacks-<label>.txt``; the paths written."""
    written = {}
    for rank, stack in report.stacks.items():
        folder = folders.get(stack.local_rank)
        if not folder:
            continue
        path = os.path.join(folder, f"stacks-{label}.txt")
        try:
            os.makedirs(folder, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(f"rank {rank} (local_rank {stack.local_rank}, pid {stack.pid}): "
                        f"{stack.location.describe()}\n")
                f.write(f"read by {stack.method or 'nothing'}"
                        f"{'; ' + stack.note if stack.note else ''}\n\n")
                f.write(stack.text[:FILE_STACK_CHARS])
            written[rank] = path
        except OSError:
            logger.warning("could not write %s", path, exc_info=True)
    return written


def report_stall(identity: dict[str, Any], report: StallReport, stalled: list[int],
                 since: dict[int, float], now: float, timeout: float | None,
                 last_progress: float | None, action: str, files: dict[int, str],
                 attempt: int) -> dict[str, Any]:
    """Emit ``elastiscope.worker.stalled``; returns its metadata. ``stalled`` and the keys of
    ``since`` (seconds without progress at ``now``, the moment the stall was found) are global
    ranks."""
    first = report.suspects[0] if report.suspects else None
    first_loc = report.stacks[first].location if first is not None else None
    waiting = sorted(r for r, s in report.stacks.items() if s.location.where == COLLECTIVE)
    metadata = dict(identity)
    metadata.update(
        stalled_ranks=json.dumps(sorted(stalled)),
        suspect_ranks=json.dumps(report.suspects),
        suspect_rank=first,
        suspect_where=first_loc.where if first_loc else None,
        suspect_code=first_loc.code.where() if first_loc and first_loc.code else None,
        waiting_ranks=json.dumps(waiting),
        summary=report.summary(),
        stall_timeout=timeout,
        last_progress_time=last_progress,
        found_time=round(now, 3),
        seconds_since_progress=round(max(since.values()), 3) if since else None,
        action=action,
        restart_count=attempt,
        capture_ms=report.capture_ms,
        ranks=json.dumps({str(r): _rank_fields(s, since.get(r), now) for r, s in sorted(report.stacks.items())}),
        stacks=json.dumps({str(r): _main_stack_text(s) for r, s in sorted(report.stacks.items())}),
        stack_files=json.dumps({str(r): p for r, p in sorted(files.items())}),
    )
    try:
        emit(Event(names.WORKER_STALLED, EventSource.AGENT, metadata=metadata))
    except Exception:
        logger.debug("could not emit %s", names.WORKER_STALLED, exc_info=True)
    return metadata


def report_stall_ended(identity: dict[str, Any], ranks: list[int], started: float | None,
                       now: float) -> None:
    """Emit ``elastiscope.worker.stall_ended``: the stalled ranks progress again."""
    metadata = dict(identity)
    metadata.update(ranks=json.dumps(sorted(ranks)), last_progress_time=started, ended_time=now,
                    stalled_seconds=round(now - started, 3) if started else None)
    try:
        emit(Event(names.WORKER_STALL_ENDED, EventSource.AGENT, metadata=metadata))
    except Exception:
        logger.debug("could not emit %s", names.WORKER_STALL_ENDED, exc_info=True)


def stacks_payload(report: StallReport, since: dict[int, float]) -> dict[str, Any]:
    """The on-demand dump as plain data (``/stacks``, ``elastiscope stacks``)."""
    return {
        "taken_at": report.taken_at,
        "capture_ms": report.capture_ms,
        "suspects": report.suspects,
        "summary": report.summary(),
        "ranks": [
            {"rank": r, **_rank_fields(s, since.get(r), report.taken_at), "stack": s.text or None}
            for r, s in sorted(report.stacks.items())
        ],
    }
