"""Stragglers on this node: the worker whose forward pass stays slower than its peers'.

In synchronous data-parallel training the step period is the same on every rank (the gradient
all-reduce waits for the slowest), so it cannot name a straggler. Each worker's progress record
carries the time its DDP forwards took per step (``elastiscope/forward_timing.py``): work a
rank does on its own, before the step's collectives, so a slow rank's is longer and the others'
are not inflated by waiting for it.

At every read of the records (about once a second) each worker's mean forward time per step,
over its latest reads covering at least ``SMOOTHING_STEPS`` steps (one read may cover a single
step: a scheduler's hiccup in it must not decide), is compared with the median of its local
peers' means. A worker whose ratio stays above ``threshold`` for ``steps`` consecutive steps is
flagged (``elastiscope.worker.straggler``); a flagged worker whose ratio stays at or under it for
as many steps recovers (``elastiscope.worker.straggler_recovered``). The same window in both
directions keeps a rank near the threshold from flapping. Steps are counted per read: a read
that covers k steps adds k to the run (the record keeps sums, not every step).

A rank's forward time is wall time: on a node whose CPUs are oversubscribed (more runnable
threads than cores), a rank that happened to wait longer for a CPU than its peers shows a longer
forward without doing more work, and such a lottery can favour one rank for many steps. So the
comparison weighs each rank's forward time by its *running share* over the same reads: of the
time its main thread was runnable, the part it spent on a CPU (the scheduler's own accounting,
``/proc/<pid>/schedstat``). A rank that does three times the work keeps a ratio near three
however busy the node is; a rank that only waited longer for a CPU does not stand out. On an
idle node the share is 1 and nothing changes. The exported ``forward_seconds`` stays the wall
time (what the job-wide recording rule compares across nodes).

Job-wide comparison (across nodes) is Prometheus' (the recording rules in
``dashboards/prometheus/rules.yml``), not the agent's: through the rendezvous store every agent
would write and read every second, load that grows with the nodes on the store the job's
rendezvous depends on.
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from agent.processes.usage import read_scheduling
from elastiscope.progress_layout import ProgressSnapshot
from telemetry import names
from telemetry.events import emit, put_metric
from telemetry.records import Event, EventSource

__all__ = ["StragglerDetector", "DEFAULT_THRESHOLD", "DEFAULT_STEPS"]

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 1.5  # forward time over the peers' median
DEFAULT_STEPS = 10  # consecutive steps over (or back under) the threshold
SMOOTHING_STEPS = 5  # the fewest steps a worker's mean forward time is taken over


@dataclass
class _Worker:
    """What the detector knows of one worker in the current attempt."""

    forward: float | None = None  # mean forward seconds per step over ``reads`` (wall time)
    weighed: float | None = None  # the same, each read weighed by the rank's running share
    # Per read: (steps, forward seconds, forward seconds x running share).
    reads: deque[tuple[int, float, float]] = field(default_factory=deque)
    scheduling: tuple[float, float] | None = None  # (on-CPU, waiting) seconds at the last read
    new_steps: int = 0  # steps with forward time read since the last comparison
    steps: int = 0  # the worker's step count, as last read
    over: int = 0  # consecutive steps over the threshold
    under: int = 0  # consecutive steps at or under it
    flagged: bool = False
    compared: bool = False  # its straggler gauge was set this attempt


class StragglerDetector:
    """A progress observer (``agent.progress.ProgressObserver``): forward times in, events and
    per-worker gauges out. ``describe(local_rank)`` gives the identity an event carries."""

    def __init__(self, role: str, threshold: float = DEFAULT_THRESHOLD, steps: int = DEFAULT_STEPS,
                 describe: Callable[[int], dict[str, Any]] | None = None) -> None:
        if not threshold > 1.0 or steps < 1:
            raise ValueError(f"straggler threshold must be > 1 and steps >= 1, not {threshold}, {steps}")
        self.role = role
        self.threshold = threshold
        self.steps = steps
        self._describe = describe if describe is not None else (lambda rank: {"local_rank": rank})
        self._workers: dict[int, _Worker] = {}

    def flagged(self) -> list[int]:
        """The local ranks flagged now."""
        return [rank for rank, w in self._workers.items() if w.flagged]

    def attempt_started(self, local_ranks: list[int]) -> None:
        self._workers = {rank: _Worker() for rank in local_ranks}

    def attempt_ended(self, last: dict[int, ProgressSnapshot | None]) -> None:
        """The attempt's processes are gone: nobody is a straggler any more."""
        for rank, worker in self._workers.items():
            if worker.compared:
                self._put(rank, "straggler", 0)
        self._workers = {}

    def observe(self, local_rank: int, previous: ProgressSnapshot | None,
                current: ProgressSnapshot, now: float) -> None:
        worker = self._workers.get(local_rank)
        if worker is None:
            return
        share = self._running_share(worker, current.pid)
        steps_before, sum_before = (previous.forward_steps, previous.forward_sum) if previous else (0, 0.0)
        new = current.forward_steps - steps_before
        if new <= 0:
            return
        forward = current.forward_sum - sum_before
        reads = worker.reads
        reads.append((new, forward, forward * share))
        while len(reads) > 1 and sum(read[0] for read in reads) - reads[0][0] >= SMOOTHING_STEPS:
            reads.popleft()
        steps = sum(read[0] for read in reads)
        worker.forward = sum(read[1] for read in reads) / steps
        worker.weighed = sum(read[2] for read in reads) / steps
        worker.new_steps += new
        worker.steps = current.steps

    @staticmethod
    def _running_share(worker: _Worker, pid: int) -> float:
        """Of the time since the last read that ``pid``'s main thread was runnable, the part it
        ran; 1 when that is unknown (first read, no accounting, or nothing runnable)."""
        scheduling = read_scheduling(pid) if pid else None
        before, worker.scheduling = worker.scheduling, scheduling
        if scheduling is None or before is None:
            return 1.0
        ran, waited = scheduling[0] - before[0], scheduling[1] - before[1]
        if ran <= 0 or waited < 0:
            return 1.0
        return ran / (ran + waited)

    def polled(self, now: float) -> None:
        """Compare every worker read anew with its peers' median."""
        known = {rank: w.weighed for rank, w in self._workers.items() if w.weighed is not None}
        for rank, worker in self._workers.items():
            if not worker.new_steps:
                continue
            self._put(rank, "forward_seconds", worker.forward)
            peers = [weighed for other, weighed in known.items() if other != rank]
            median = statistics.median(peers) if peers else 0.0
            if median > 0:
                ratio = worker.weighed / median
                self._put(rank, "straggler_ratio", ratio)
                self._judge(rank, worker, ratio, median)
            worker.new_steps = 0

    def _judge(self, rank: int, worker: _Worker, ratio: float, median: float) -> None:
        if ratio > self.threshold:
            worker.over, worker.under = worker.over + worker.new_steps, 0
        else:
            worker.over, worker.under = 0, worker.under + worker.new_steps
        if not worker.flagged and worker.over >= self.steps:
            worker.flagged = True
            self._emit(names.WORKER_STRAGGLER, rank, worker, ratio, median)
        elif worker.flagged and worker.under >= self.steps:
            worker.flagged = False
            self._emit(names.WORKER_STRAGGLER_RECOVERED, rank, worker, ratio, median)
        worker.compared = True
        self._put(rank, "straggler", 1 if worker.flagged else 0)

    def _emit(self, kind: str, rank: int, worker: _Worker, ratio: float, median: float) -> None:
        try:
            metadata = dict(self._describe(rank))
            metadata.update(
                local_rank=rank,
                ratio=round(ratio, 3),
                forward_seconds=worker.forward,
                weighed_forward_seconds=worker.weighed,
                peer_median_seconds=median,
                threshold=self.threshold,
                window_steps=self.steps,
                steps=worker.steps,
            )
            emit(Event(kind, EventSource.WORKER, metadata=metadata))
        except Exception:  # telemetry never breaks the job
            logger.debug("could not emit %s", kind, exc_info=True)

    def _put(self, rank: int, what: str, value: float) -> None:
        put_metric(f"workers.{self.role}.worker.{rank}.progress.{what}", value)
