"""The local agent's stall supervision: detect (agent/stalls.py), keep every rank's stack
(agent/stall_report.py), publish the stall metrics, and tell the agent what the policy asks.

``--on-stall report`` (the default): the event, the files and the metrics, and the job runs
on; ``restart``: the same, then a restart with reason ``stall`` (a failure when no restart is
left); ``fail``: the workers are stopped and the run fails with the stall as its reason.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from agent.stall_report import (StallReport, report_stall, report_stall_ended, stacks_payload,
                                take_stacks, write_rank_files)
from agent.stalls import StallDetector, StallPolicy
from agent.stacks import StackTarget
from telemetry.events import put_metric

__all__ = ["StallWatch", "StallFound", "dump_file_for", "log_folder"]


@dataclass
class StallFound:
    """A stall the agent must act on: the policy's action, the capture, the event's metadata."""

    action: str
    report: StallReport
    stalled: list[int]  # global ranks
    metadata: dict[str, Any]

    def reason(self) -> str:
        return (f"stalled: no progress for {self.metadata.get('seconds_since_progress')}s "
                f"(stall timeout {self.metadata.get('stall_timeout')}s): {self.report.summary()}")


_STALE = object()


class StallWatch:
    """One per agent. ``begin_attempt`` when workers start; ``due()`` and ``check()`` from the
    monitor loop; ``stacks_now()`` from any thread."""

    def __init__(self, policy: StallPolicy, role: str,
                 on_stall_time: Callable[[float, float], None] | None = None) -> None:
        self.detector = StallDetector(policy)
        self.policy = policy
        self.role = role
        # Told (last progress, end) of each stretch without progress, for goodput's stall
        # bucket: when a reported stall ends, or when one is found that the policy acts on.
        self._on_stall_time = on_stall_time
        self._targets: dict[int, StackTarget] = {}
        self._folders: dict[int, str] = {}
        self._global: dict[int, int] = {}
        self._attempt = 0
        self._episodes = 0
        # The earliest deadline (epoch seconds), kept between checks: the monitor asks ten times
        # a second, and it moves only when the records are read, and every read is followed by
        # a check. _STALE: to be worked out at the next ask.
        self._due: float | None | object = _STALE
        self._capture_lock = threading.Lock()  # one capture at a time (monitor or endpoint)

    def begin_attempt(self, attempt: int, pids: dict[int, int], dump_files: dict[int, str | None],
                      folders: dict[int, str], local_to_global: dict[int, int]) -> None:
        self._attempt = attempt
        self._due = _STALE
        self._targets = {lr: StackTarget(pid, dump_files.get(lr)) for lr, pid in pids.items()}
        self._folders, self._global = dict(folders), dict(local_to_global)
        for local_rank in pids:
            put_metric(f"workers.{self.role}.worker.{local_rank}.progress.stalled", 0)

    def due(self, running: set[int]) -> float | None:
        """When (epoch seconds) a check could find one of the ``running`` local ranks stalled;
        None: not before new progress."""
        return self.detector.deadline(running)

    def due_monotonic(self, now: float, running: Callable[[], set[int]]) -> float | None:
        """``due`` on the monotonic clock whose reading is ``now``, as of the last check (a
        worker that has exited since can only make the monitor wake and check once early).
        ``running()`` gives the running local ranks; it is called only when the deadline is
        worked out again (after a check), not on every monitor pass."""
        if self._due is _STALE:
            self._due = self.due(running())
        due = self._due
        return None if due is None else now + max(0.0, due - time.time())  # type: ignore[operator]

    def publish(self, now: float) -> None:
        """Seconds since each reporting worker's last progress (every progress poll)."""
        for local_rank, seconds in self.detector.seconds_since_progress(now).items():
            put_metric(f"workers.{self.role}.worker.{local_rank}.progress.seconds_since_progress",
                       round(seconds, 3))

    def check(self, describe: Callable[[], dict[str, Any]], running: set[int], now: float) -> StallFound | None:
        """Look for new stalls among the ``running`` local ranks; keep the stacks and tell
        before anything is stopped. ``describe()`` gives who is speaking (the agent's identity);
        it is called only when there is something to tell: it looks up the host name, which
        costs system calls, and this runs at every read of the records."""
        self._due = _STALE
        stalled_before = dict(self.detector.stalled)
        new, resumed = self.detector.check(now, running)
        for local_rank in resumed:
            put_metric(f"workers.{self.role}.worker.{local_rank}.progress.stalled", 0)
        if resumed and not self.detector.stalled:
            since = min(stalled_before[r] for r in resumed) or None
            report_stall_ended(describe(), [self._global.get(r, r) for r in resumed], since, now)
            if since is not None and self._on_stall_time is not None:
                self._on_stall_time(since, now)
        if not new:
            return None
        for local_rank in new:
            put_metric(f"workers.{self.role}.worker.{local_rank}.progress.stalled", 1)
        self._episodes += 1
        with self._capture_lock:
            report = take_stacks({lr: t for lr, t in self._targets.items() if lr in running}, self._global)
        label = f"stall-{self._attempt}-{self._episodes}"
        files = write_rank_files(report, self._folders, label)
        since = {self._global.get(lr, lr): s for lr, s in self.detector.seconds_since_progress(now).items()}
        last = [self.detector.last_progress(r) for r in new]
        metadata = report_stall(
            describe(), report, [self._global.get(r, r) for r in new], since, now,
            self.detector.timeout_for(new[0]) or self.policy.first_step_timeout,
            min((t for t in last if t), default=None), self.policy.action, files, self._attempt)
        last_progress = min((t for t in last if t), default=None)
        if self.policy.action != "report" and last_progress is not None and self._on_stall_time is not None:
            self._on_stall_time(last_progress, now)
        return StallFound(self.policy.action, report, [self._global.get(r, r) for r in new], metadata)

    def stacks_now(self) -> dict[str, Any]:
        """Every running worker's stack now, as plain data; nothing stopped, nothing written."""
        targets = dict(self._targets)
        with self._capture_lock:
            report = take_stacks(targets, dict(self._global))
        since = {self._global.get(lr, lr): s
                 for lr, s in self.detector.seconds_since_progress(time.time()).items()}
        return stacks_payload(report, since)

    @staticmethod
    def failures(found: StallFound, exit_codes: dict[int, tuple[int, int, int | None]]) -> dict[int, ProcessFailure]:
        """torch's ProcessFailure for each suspect (each stalled rank when none is named), the
        stall as its message; ``exit_codes``: global rank -> (local rank, pid, exit code)."""
        blamed = found.report.suspects or found.stalled
        out = {}
        for rank in blamed:
            if rank not in exit_codes:
                continue
            local_rank, pid, code = exit_codes[rank]
            failure = ProcessFailure(local_rank, pid, code if code is not None else -1, "<N/A>")
            failure.message = found.reason()
            failure.error_file_data = {"message": failure.message}  # torch's FAILED event says it
            out[rank] = failure
        return out


def dump_file_for(record: str | None) -> str | None:
    """Where a worker's faulthandler writes: beside its progress record."""
    return f"{record}.stacks" if record else None


def log_folder(error_file: str | None) -> str | None:
    """A worker's log folder in the run's folder (torch's layout: ``<run>/attempt_<n>/<rank>``)."""
    if not error_file or error_file == os.devnull:
        return None
    return os.path.dirname(error_file)
