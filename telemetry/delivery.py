"""Delivery policy: how one record reaches one sink, and how what became of it is counted.

The split follows OpenTelemetry's SDK: a *sink* is transport (``emit``, ``flush``, ``close``);
this module is policy. A slow sink gets a bounded queue and one delivery thread, in the manner
of ``BatchSpanProcessor``: ``offer`` appends and returns, a full queue drops the record and
counts it, and a sink that raises is counted and logged once per burst. Cheap in-process sinks
(``synchronous = True``) are called inline, still behind a ``try``.

Counters are exact under concurrent producers, so ``offered == delivered + errors + dropped``
holds once a delivery is closed, and ``dropped`` is the true number of records a sink never saw.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from typing import Any

from telemetry.sink import Sink

__all__ = ["SinkStats", "ErrorReporter", "Delivery", "QueuedDelivery", "make_delivery",
           "DEFAULT_QUEUE_SIZE", "ERROR_LOG_INTERVAL_S"]

log = logging.getLogger("elastiscope.telemetry")

DEFAULT_QUEUE_SIZE = 131_072
# Within a burst of failures a sink is reported once; a burst that lasts longer than this is
# reported again (with the count since), so a sink that never recovers still shows up in logs.
ERROR_LOG_INTERVAL_S = 30.0
# The delivery thread counts without a lock (see Delivery.deliver); a reusable stand-in.
_UNLOCKED = contextlib.nullcontext()


class SinkStats:
    """Counters for one sink, read by the metrics exporter and by tests.

    ``offered``: records handed to the sink's delivery; ``delivered``: ``emit`` returned;
    ``errors``: ``emit`` raised; ``dropped``: never reached ``emit`` (queue full, or the
    delivery closed before the record's turn came).
    """

    __slots__ = ("offered", "delivered", "dropped", "errors")

    def __init__(self) -> None:
        self.offered = 0
        self.delivered = 0
        self.dropped = 0
        self.errors = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class ErrorReporter:
    """Logs a sink's failures once per burst instead of once per record.

    A burst starts with a failure after a success (or at the start) and ends with the next
    success; the recovery is logged with the number of failures in the burst.
    """

    def __init__(self, sink_name: str) -> None:
        self._sink_name = sink_name
        self._last_logged = float("-inf")
        self._unreported = 0
        self.in_burst = False

    def report(self, exc: BaseException) -> None:
        self._unreported += 1
        now = time.monotonic()
        if not self.in_burst or now - self._last_logged >= ERROR_LOG_INTERVAL_S:
            self.in_burst = True
            self._last_logged = now
            count, self._unreported = self._unreported, 0
            log_quietly(
                logging.WARNING,
                "telemetry sink %r failed (%d time(s) since last report): %s: %s",
                self._sink_name, count, type(exc).__name__, exc,
            )

    def succeeded(self) -> None:
        if self.in_burst:
            self.in_burst = False
            count, self._unreported = self._unreported, 0
            log_quietly(
                logging.INFO, "telemetry sink %r recovered (%d more failure(s) before that)",
                self._sink_name, count,
            )


def log_quietly(level: int, msg: str, *args: Any) -> None:
    """Log, and never raise: telemetry's own reports must not break the job either."""
    try:
        log.log(level, msg, *args)
    except Exception:  # logging itself broken (closed stream)
        pass


class Delivery:
    """Calls a synchronous sink inline, on the producer's thread."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.stats = SinkStats()
        self.errors = ErrorReporter(sink.name)
        # Producers count under this lock; a close in a signal handler only waits for it briefly.
        self.count_lock = threading.Lock()

    def deliver(self, record: Any, counts_offer: bool = True) -> None:
        """Hand ``record`` to the sink and count what became of it: the one place that does.

        Inline delivery counts the offer together with its outcome, under the lock concurrent
        producers share. The delivery thread of a queue counted the offer when the record was
        queued and is the only writer of ``delivered`` and ``errors``, so it takes no lock: a
        signal handler that flushes while the interrupted producer holds the lock still drains.
        """
        try:
            self.sink.emit(record)
        except Exception as exc:
            failure: Exception | None = exc
        else:
            failure = None
        stats = self.stats
        with self.count_lock if counts_offer else _UNLOCKED:
            if counts_offer:
                stats.offered += 1
            if failure is None:
                stats.delivered += 1
            else:
                stats.errors += 1
        if failure is not None:
            self.errors.report(failure)
        elif self.errors.in_burst:
            self.errors.succeeded()

    # Inline delivery: offering a record is delivering it (no extra call on the hot path).
    offer = deliver

    def wake(self) -> None:
        """Nothing to wake: inline delivery has no thread."""

    def flush(self, timeout: float) -> bool:
        return _safe_flush(self.sink, timeout, self.errors)

    def close(self, timeout: float) -> bool:
        ok = self.flush(timeout)
        _safe_close(self.sink, self.errors)
        return ok


class QueuedDelivery(Delivery):
    """A bounded queue and a daemon thread in front of a slow sink.

    Producers count and append under a lock; the delivery thread and ``close`` take records
    out with ``popleft`` (atomic), so each record is delivered, failed or dropped exactly once.
    """

    def __init__(self, sink: Sink, queue_size: int) -> None:
        super().__init__(sink)
        self._queue: collections.deque = collections.deque()
        self._queue_size = queue_size
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    def offer(self, record: Any) -> None:
        queue, stats = self._queue, self.stats
        # ``offered`` is counted after the record's fate: if a signal handler interrupts this
        # block and flushes, the interrupted record never looks like one still to wait for.
        with self.count_lock:
            if self._closing or len(queue) >= self._queue_size:
                stats.dropped += 1
                stats.offered += 1
                return
            queue.append(record)
            stats.offered += 1
            if self._thread is None:
                self._start()
        if not self._wake.is_set():
            self._wake.set()

    def _start(self) -> None:
        t = threading.Thread(target=self._run, name=f"elastiscope-sink-{self.sink.name}", daemon=True)
        t.start()
        self._thread = t

    def _run(self) -> None:
        queue = self._queue
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                try:
                    record = queue.popleft()
                except IndexError:
                    break
                self.deliver(record, counts_offer=False)
            with self._progress:
                self._progress.notify_all()
            if self._closing:
                return

    def wake(self) -> None:
        """Start draining now: ``close`` wakes every queue before it waits for any."""
        self._wake.set()

    def _drained(self) -> bool:
        s = self.stats
        return s.delivered + s.errors + s.dropped >= s.offered

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._thread is not None and self._thread.is_alive():
            self._wake.set()
            with self._progress:
                while not self._drained():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    # A bounded wait: the notify may have fired between our check and this wait.
                    self._progress.wait(min(remaining, 0.05))
        return _safe_flush(self.sink, max(0.0, deadline - time.monotonic()), self.errors)

    def close(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        ok = self.flush(timeout)
        abandoned = self._abandon_queue()
        if abandoned:
            log_quietly(
                logging.WARNING, "telemetry sink %r: %d record(s) not delivered before the deadline",
                self.sink.name, abandoned,
            )
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                # Stuck inside emit: closing the sink under its feet could corrupt its output.
                return False
        _safe_close(self.sink, self.errors)
        return ok

    def _abandon_queue(self) -> int:
        """Refuse later records and count what is still queued as dropped; returns that count."""
        # When close runs in a signal handler, the interrupted main thread may hold this lock
        # (in offer); waiting for it would deadlock, so after a moment we go on without it.
        locked = self.count_lock.acquire(timeout=0.1)
        abandoned = 0
        try:
            self._closing = True
            while True:
                try:
                    self._queue.popleft()
                except IndexError:
                    break
                abandoned += 1
            self.stats.dropped += abandoned
        finally:
            if locked:
                self.count_lock.release()
        return abandoned


def make_delivery(sink: Sink, queue_size: int) -> Delivery:
    """Inline delivery for a synchronous sink, a queue of ``queue_size`` for any other."""
    if sink.synchronous:
        return Delivery(sink)
    return QueuedDelivery(sink, queue_size)


def _safe_flush(sink: Sink, timeout: float, errors: ErrorReporter) -> bool:
    try:
        return bool(sink.flush(timeout))
    except Exception as exc:
        errors.report(exc)
        return False


def _safe_close(sink: Sink, errors: ErrorReporter) -> None:
    try:
        sink.close()
    except Exception as exc:
        errors.report(exc)
