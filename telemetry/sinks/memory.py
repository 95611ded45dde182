"""A ring buffer of recent events: what ``/events`` and ``/status`` read, and what tests inspect."""

from __future__ import annotations

import collections
import itertools
import threading
import time
from typing import Callable

from telemetry.records import Event
from telemetry.sink import Sink

__all__ = ["MemorySink"]


class MemorySink(Sink):
    """Keeps the last ``capacity`` events, each with a sequence number that never repeats.

    Cheap enough to run synchronously: an append to a bounded deque. Readers get copies, and
    can wait for new events (``wait_for``) instead of polling.
    """

    name = "memory"
    synchronous = True
    metrics = False

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._ring: collections.deque[tuple[int, Event]] = collections.deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self._cond = threading.Condition()
        # Readers inside wait_for; emit takes the condition's lock only when there are some.
        self._waiting = 0
        self._listeners: tuple[Callable[[], None], ...] = ()
        self._listeners_lock = threading.Lock()

    def emit(self, record: Event) -> None:
        self._ring.append((next(self._seq), record))
        if self._waiting:
            with self._cond:
                self._cond.notify_all()
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener's failure must not reach the producer
                pass

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each new event is in the ring, on the producer's thread.

        For readers that cannot block on ``wait_for`` (the event loop of ``/events/stream``):
        the listener must be quick and must not raise; it typically schedules a wake-up.
        """
        with self._listeners_lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with self._listeners_lock:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

    def listener_count(self) -> int:
        """How many listeners are registered (the endpoint adds one per open event stream)."""
        return len(self._listeners)

    def __len__(self) -> int:
        return len(self._ring)

    def snapshot(self) -> list[tuple[int, Event]]:
        """(sequence number, event) pairs, oldest first."""
        return list(self._ring)

    def events(self) -> list[Event]:
        return [e for _, e in list(self._ring)]

    def last_seq(self) -> int:
        ring = self._ring
        return ring[-1][0] if ring else 0

    def query(
        self,
        since: int = 0,
        name: str | None = None,
        state: str | None = None,
        source: str | None = None,
        rank: int | None = None,
        limit: int | None = None,
    ) -> list[tuple[int, Event]]:
        """Events after sequence ``since`` that match every given filter, oldest first.

        ``name`` matches a prefix of the event name; ``state`` and ``rank`` match the metadata
        keys ``state`` and ``global_rank``; ``limit`` keeps the newest N matches.
        """
        out = []
        for seq, ev in list(self._ring):
            if seq <= since:
                continue
            md = ev.metadata
            if name is not None and not ev.name.startswith(name):
                continue
            if state is not None and md.get("state") != state:
                continue
            if source is not None and str(getattr(ev.source, "value", ev.source)) != source:
                continue
            if rank is not None and md.get("global_rank") != rank:
                continue
            out.append((seq, ev))
        if limit is not None:
            out = out[-limit:] if limit > 0 else []
        return out

    def wait_for(self, predicate, timeout: float) -> Event | None:
        """Block until an event satisfying ``predicate`` is in the ring, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._waiting += 1
            try:
                while True:
                    for _, ev in list(self._ring):
                        if predicate(ev):
                            return ev
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    # emit() reads the waiter count without the lock, so a wake-up can be
                    # missed in a narrow window; short slices bound that miss without busy polling.
                    self._cond.wait(min(remaining, 0.05))
            finally:
                self._waiting -= 1
