"""Stalls: a worker that has stopped making progress, told from its progress record.

A progress observer (agent/progress.py). A worker's progress is its last step's end, or its
last checkpoint saved or loaded, whichever is latest (the worker's own clock, so a slow agent
poll does not delay it). It is stalled once that is older than its timeout:

* ``--stall-timeout SECONDS``: that many seconds after its last progress;
* ``--stall-timeout auto`` (the default): ``max(AUTO_FLOOR_S, AUTO_FACTOR x p99)`` of the step
  durations it has reported (every attempt counted), armed once ``AUTO_MIN_STEPS`` durations
  are known; before that it has no timeout;
* before its first step of an attempt: ``first_step_timeout`` seconds after the attempt
  started, and only for a worker known to report (it did in an earlier attempt, or a local
  peer has in this one). A worker that never reports progress is never stalled.

``deadline()`` is the next moment a check could find a new stall, so the monitor loop wakes
then rather than at its next poll; ``check()`` returns the newly stalled ranks and the ranks
that progressed again since they were found stalled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from elastiscope.progress_layout import DURATION_BOUNDS, F_EXITING, ProgressSnapshot

__all__ = ["StallPolicy", "StallDetector", "STALL_ACTIONS", "ON_STALL_DEFAULT", "AUTO_FLOOR_S",
           "AUTO_FACTOR", "AUTO_MIN_STEPS", "FIRST_STEP_TIMEOUT_S"]

STALL_ACTIONS = ("restart", "fail", "report")
ON_STALL_DEFAULT = "report"
AUTO_FLOOR_S = 60.0
AUTO_FACTOR = 10.0
AUTO_QUANTILE = 0.99
AUTO_MIN_STEPS = 10
FIRST_STEP_TIMEOUT_S = 600.0
# Ranks of one hang stop within a step of each other: those due this close after a rank found
# stalled are found with it, so that one hang is one event with every rank's stack.
GROUPING_S = 1.0


@dataclass(frozen=True)
class StallPolicy:
    """``timeout``: seconds, or None for the automatic rule; ``action``: one of STALL_ACTIONS;
    ``enabled`` False turns detection off."""

    timeout: float | None = None
    first_step_timeout: float = FIRST_STEP_TIMEOUT_S
    action: str = ON_STALL_DEFAULT
    enabled: bool = True

    def describe(self) -> str:
        return f"{self.timeout:g}s" if self.timeout is not None else "auto"


def _quantile_bound(buckets: list[int], q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile (the +Inf bucket: twice the
    last bound)."""
    total = sum(buckets)
    if not total:
        return None
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= q * total:
            return DURATION_BOUNDS[i] if i < len(DURATION_BOUNDS) else 2 * DURATION_BOUNDS[-1]
    return 2 * DURATION_BOUNDS[-1]


class StallDetector:
    """Which of this agent's workers are stalled, attempt after attempt."""

    def __init__(self, policy: StallPolicy, clock=time.time) -> None:
        self.policy = policy
        self._clock = clock
        self._started_at = 0.0
        self._ranks: list[int] = []
        self._progress: dict[int, float] = {}  # rank: its last progress (epoch seconds)
        self._steps: dict[int, int] = {}  # rank: steps this attempt
        self._durations: dict[int, list[int]] = {}  # rank: finished attempts' bucket counts
        self._current: dict[int, tuple[int, ...]] = {}  # rank: this attempt's bucket counts
        self._reported_before: set[int] = set()
        self._exiting: set[int] = set()  # ranks whose interpreter is shutting down: done
        self.stalled: dict[int, float] = {}  # rank: its last progress when found stalled
        self.stalls_total = 0

    # ---- the observer ----------------------------------------------------------------------

    def attempt_started(self, local_ranks: list[int]) -> None:
        self._started_at = self._clock()
        self._ranks = list(local_ranks)
        self._progress, self._steps, self._current, self.stalled = {}, {}, {}, {}
        self._exiting = set()

    def attempt_ended(self, last: dict[int, ProgressSnapshot | None]) -> None:
        for rank, snap in last.items():
            if snap is None:
                continue
            self._reported_before.add(rank)
            counts = self._durations.setdefault(rank, [0] * (len(DURATION_BOUNDS) + 1))
            for i, n in enumerate(snap.buckets):
                counts[i] += n
        self._ranks, self._progress, self._steps, self._current, self.stalled = [], {}, {}, {}, {}
        self._exiting = set()

    def observe(self, local_rank: int, previous: ProgressSnapshot | None,
                current: ProgressSnapshot, now: float) -> None:
        moment = max(current.last_end, current.saved_time, current.loaded_time)
        if moment > 0:
            self._progress[local_rank] = max(moment, self._progress.get(local_rank, 0.0))
        self._steps[local_rank] = current.steps
        self._current[local_rank] = current.buckets
        if current.flags & F_EXITING:
            self._exiting.add(local_rank)

    def polled(self, now: float) -> None:
        pass

    # ---- the rule ----------------------------------------------------------------------------

    def timeout_for(self, rank: int) -> float | None:
        """Seconds without progress that make ``rank`` stalled now; None: it cannot stall."""
        if not self.policy.enabled:
            return None
        if not self._steps.get(rank):
            return None
        if self.policy.timeout is not None:
            return self.policy.timeout
        counts = list(self._durations.get(rank, [0] * (len(DURATION_BOUNDS) + 1)))
        for i, n in enumerate(self._current.get(rank, ())):
            counts[i] += n
        if sum(counts) < AUTO_MIN_STEPS:
            return None
        return max(AUTO_FLOOR_S, AUTO_FACTOR * (_quantile_bound(counts, AUTO_QUANTILE) or 0.0))

    def _expected_to_report(self, rank: int) -> bool:
        return rank in self._reported_before or any(self._steps.get(r) for r in self._ranks)

    def _deadline_of(self, rank: int) -> float | None:
        if rank in self.stalled or rank in self._exiting:
            return None
        timeout = self.timeout_for(rank)
        if timeout is not None and rank in self._progress:
            return self._progress[rank] + timeout
        if self.policy.enabled and not self._steps.get(rank) and self._expected_to_report(rank):
            return self._started_at + self.policy.first_step_timeout
        return None

    def deadline(self, running: set[int] | None = None) -> float | None:
        """The earliest moment (epoch seconds) a worker not yet stalled would be, among the
        ``running`` ones (None: all): an exited worker is never stalled."""
        ranks = self._ranks if running is None else [r for r in self._ranks if r in running]
        moments = [d for d in map(self._deadline_of, ranks) if d is not None]
        return min(moments) if moments else None

    def check(self, now: float, running: set[int]) -> tuple[list[int], list[int]]:
        """(newly stalled ranks, ranks that progressed again), among the ``running`` ones."""
        resumed = [r for r, since in self.stalled.items() if self._progress.get(r, 0.0) > since]
        for rank in resumed:
            del self.stalled[rank]
        due = {r: d for r in self._ranks if r in running and (d := self._deadline_of(r)) is not None}
        new = [r for r, d in due.items() if now >= d]
        if new:
            new = [r for r, d in due.items() if d <= now + GROUPING_S]
        for rank in new:
            self.stalled[rank] = self._progress.get(rank, 0.0)
        if new and len(self.stalled) == len(new):  # a new episode, not one growing
            self.stalls_total += 1
        return new, resumed

    def last_progress(self, rank: int) -> float | None:
        return self._progress.get(rank)

    def seconds_since_progress(self, now: float) -> dict[int, float]:
        return {rank: max(0.0, now - t) for rank, t in self._progress.items() if rank in self._ranks}
