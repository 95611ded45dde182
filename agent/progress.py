"""The agent's side of the progress channel: one record per worker, read at the agent's pace.

Each attempt gets fresh records (``<dir>/<attempt>.<local_rank>``, in /dev/shm when there is
one), so a worker of a stopped attempt can never write into its successor's. ``poll_due``
says when the monitor loop reads them (every ``interval`` seconds); ``poll`` reads at once
(also when workers exit, so the last steps are counted). What is read goes to the
observers: the metrics publisher here; the straggler and goodput views will be observers
too, fed the same ``(local_rank, previous snapshot, snapshot, now)``, without a change to
the reading.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import deque
from typing import Any, Protocol

import elastiscope
from elastiscope.progress_layout import (
    DURATION_BOUNDS,
    ProgressReader,
    ProgressSnapshot,
    create_record,
)
from telemetry.events import put_metric

__all__ = ["ProgressChannels", "ProgressObserver", "ProgressMetrics", "SITE_DIR"]

# The directory our sitecustomize lives in (put first on a Python worker's PYTHONPATH).
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(elastiscope.__file__)), "site")
POLL_INTERVAL_S = 1.0
RATE_WINDOW_S = 10.0


class ProgressObserver(Protocol):
    """What a view of progress is told: an attempt's workers, what each poll read, the end of
    an attempt (with each worker's last snapshot, None for a worker that never reported)."""

    def attempt_started(self, local_ranks: list[int]) -> None: ...

    def attempt_ended(self, last: dict[int, ProgressSnapshot | None]) -> None: ...

    def observe(self, local_rank: int, previous: ProgressSnapshot | None,
                current: ProgressSnapshot, now: float) -> None: ...

    def polled(self, now: float) -> None: ...


class ProgressChannels:
    """The records of this agent's workers, attempt after attempt."""

    def __init__(self, observers: list[ProgressObserver], interval: float = POLL_INTERVAL_S) -> None:
        self.observers = observers
        self._interval = interval
        self._dir: str | None = None
        self._readers: dict[int, ProgressReader] = {}
        self._last: dict[int, ProgressSnapshot | None] = {}
        self._next_poll = 0.0

    def begin_attempt(self, attempt: int, local_ranks: list[int]) -> dict[int, str]:
        """Fresh records for ``local_ranks``; returns each one's path (empty if none could be made:
        the job runs, unwatched)."""
        self.end_attempt()
        try:
            if self._dir is None:
                self._dir = _records_dir()
            paths = {}
            for rank in local_ranks:
                path = os.path.join(self._dir, f"{attempt}.{rank}")
                create_record(path)
                self._readers[rank] = ProgressReader(path)
                self._last[rank] = None
                paths[rank] = path
        except OSError:
            self._close_readers()
            return {}
        self._next_poll = time.monotonic() + self._interval
        for observer in self.observers:
            observer.attempt_started(list(paths))
        return paths

    def end_attempt(self) -> None:
        """Read the attempt's records one last time and let them go (idempotent)."""
        if not self._readers:
            return
        self.poll()
        last = dict(self._last)
        self._close_readers()
        for observer in self.observers:
            observer.attempt_ended(last)

    def poll_due(self, now: float) -> bool:
        """Whether the interval has passed since the last timed read (``now`` monotonic); when
        it has, the next one is counted from now and the caller reads (``poll``)."""
        if self._readers and now >= self._next_poll:
            self._next_poll = now + self._interval
            return True
        return False

    def poll(self) -> bool:
        """Read every record now and hand what changed to the observers; True if any changed."""
        now = time.time()
        changed = False
        for rank, reader in self._readers.items():
            current = reader.read()
            previous = self._last.get(rank)
            if current is None or (previous is not None and _unchanged(previous, current)):
                continue
            changed = True
            self._last[rank] = current
            for observer in self.observers:
                observer.observe(rank, previous, current, now)
        for observer in self.observers:
            observer.polled(now)
        return changed

    def status(self) -> dict[int, dict[str, Any]]:
        """Each worker's last progress, for /status (``reporting`` False until its first report)."""
        out = {}
        for rank in list(self._readers):
            snap = self._last.get(rank)
            out[rank] = {"reporting": False} if snap is None else {
                "reporting": True, "steps": snap.steps, "global_step": _global(snap),
                "last_step_time": snap.last_end or None, "last_step_duration": snap.last_duration or None,
            }
        return out

    def close(self) -> None:
        self.end_attempt()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _close_readers(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers, self._last = {}, {}


_PREFIX = "elastiscope-progress-"


def _records_dir() -> str:
    """A directory for this agent's records, named with its pid; the directories of agents
    that died without cleaning up (SIGKILL) are removed on the way."""
    parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    for name in os.listdir(parent):
        pid = name[len(_PREFIX):].split("-", 1)[0] if name.startswith(_PREFIX) else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's: alive
    return True


def _unchanged(a: ProgressSnapshot, b: ProgressSnapshot) -> bool:
    return (a.steps, a.global_step, a.saved_step, a.loaded_step, a.scalars) == \
        (b.steps, b.global_step, b.saved_step, b.loaded_step, b.scalars)


def _global(snap: ProgressSnapshot) -> int | None:
    return snap.global_step if snap.global_step >= 0 else None


class ProgressMetrics:
    """Snapshots into put_metric points (``workers.<role>.worker.<rank>.progress.*``), which the
    Prometheus sink maps to the ``elastiscope_worker_*`` progress series. Steps and step
    durations are totals across attempts (a record starts at 0 with each attempt)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self._base_steps: dict[int, int] = {}  # steps of the finished attempts, per rank
        self._base_buckets: dict[int, list[int]] = {}
        self._base_sum: dict[int, float] = {}
        self._rates: deque[tuple[float, int]] = deque()
        self._totals: dict[int, int] = {}

    def attempt_ended(self, last: dict[int, ProgressSnapshot | None]) -> None:
        for rank, snap in last.items():
            if snap is None:
                continue
            self._base_steps[rank] = self._base_steps.get(rank, 0) + snap.steps
            buckets = self._base_buckets.setdefault(rank, [0] * (len(DURATION_BOUNDS) + 1))
            for i, n in enumerate(snap.buckets):
                buckets[i] += n
            self._base_sum[rank] = self._base_sum.get(rank, 0.0) + snap.duration_sum

    def attempt_started(self, local_ranks: list[int]) -> None:
        """Every worker of an attempt, as not reporting until it reports."""
        for rank in local_ranks:
            self._put(rank, "reporting", 0)

    def observe(self, local_rank: int, previous: ProgressSnapshot | None,
                current: ProgressSnapshot, now: float) -> None:
        rank = local_rank
        if previous is None:
            self._put(rank, "reporting", 1)
        total = self._base_steps.get(rank, 0) + current.steps
        self._totals[rank] = total
        if previous is None or current.steps != previous.steps:
            self._put(rank, "steps", total)
            self._put(rank, "last_step_time", current.last_end)
            self._put_durations(rank, previous, current)
        if current.global_step >= 0:
            self._put(rank, "global_step", current.global_step)
        if current.saved_step >= 0:
            self._put(rank, "checkpoint_step.saved", current.saved_step)
        if current.loaded_step >= 0:
            self._put(rank, "checkpoint_step.loaded", current.loaded_step)
        for name, value in current.scalars.items():
            if previous is None or previous.scalars.get(name) != value:
                self._put(rank, f"scalar.{name}", value)

    def polled(self, now: float) -> None:
        """The node's step rate: mean steps per second of its reporting workers, over the last
        ``RATE_WINDOW_S`` seconds."""
        if not self._totals:
            return
        self._rates.append((now, sum(self._totals.values())))
        while len(self._rates) > 2 and now - self._rates[1][0] >= RATE_WINDOW_S:
            self._rates.popleft()
        (t0, s0), (t1, s1) = self._rates[0], self._rates[-1]
        if t1 > t0:
            put_metric(f"workers.{self.role}.progress.steps_per_second",
                       (s1 - s0) / (t1 - t0) / len(self._totals))

    def _put_durations(self, rank: int, previous: ProgressSnapshot | None, current: ProgressSnapshot) -> None:
        base = self._base_buckets.get(rank)
        for i, n in enumerate(current.buckets):
            if previous is None or previous.buckets[i] != n:
                self._put(rank, f"step_duration_bucket.{i}", n + (base[i] if base else 0))
        self._put(rank, "step_duration_sum", self._base_sum.get(rank, 0.0) + current.duration_sum)

    def _put(self, rank: int, what: str, value: float) -> None:
        put_metric(f"workers.{self.role}.worker.{rank}.progress.{what}", value)
