"""Sink registry and delivery: the producer never waits and never sees a sink's failure.

The split follows OpenTelemetry's SDK: a *sink* is transport (``emit``, ``flush``, ``close``);
this module is policy. Each slow sink gets a bounded queue and one delivery thread, in the
manner of ``BatchSpanProcessor``: ``publish`` appends and returns, a full queue drops the
record and counts it, and a sink that raises is counted and logged once per burst. Cheap
in-process sinks (``synchronous = True``) are called inline, still behind a ``try``.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
from typing import Any, Callable, Iterable

from telemetry.events import Event
from telemetry.records import MetricPoint

__all__ = [
    "Sink",
    "Pipeline",
    "SinkStats",
    "DESTINATIONS",
    "register_destination",
    "get_pipeline",
    "set_pipeline",
    "DEFAULT_QUEUE_SIZE",
]

log = logging.getLogger("elastiscope.telemetry")

DEFAULT_QUEUE_SIZE = 131_072
# A failing sink is reported at most once per this many seconds, with the count since.
ERROR_LOG_INTERVAL_S = 30.0


class Sink:
    """Base class of every sink. Subclasses override ``emit`` and, where they buffer, ``flush``.

    ``events`` / ``metrics`` say which record types the sink wants; the pipeline does not hand
    it the others. ``synchronous`` sinks run on the producer's thread and must be cheap.
    """

    name: str = "sink"
    synchronous: bool = False
    events: bool = True
    metrics: bool = True

    def emit(self, record: Event | MetricPoint) -> None:
        raise NotImplementedError

    def flush(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass

    def wants(self, record: object) -> bool:
        return self.events if isinstance(record, Event) else self.metrics


class SinkStats:
    """Counters for one sink, read by the metrics exporter and by tests."""

    __slots__ = ("offered", "delivered", "dropped", "errors")

    def __init__(self) -> None:
        self.offered = 0
        self.delivered = 0
        self.dropped = 0
        self.errors = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class _ErrorReporter:
    """Logs a sink's failures once per burst instead of once per record."""

    def __init__(self, sink_name: str) -> None:
        self._sink_name = sink_name
        self._last_logged = float("-inf")
        self._since_last = 0

    def report(self, exc: BaseException) -> None:
        self._since_last += 1
        now = time.monotonic()
        if now - self._last_logged >= ERROR_LOG_INTERVAL_S:
            try:
                log.warning(
                    "telemetry sink %r failed %d time(s): %s: %s",
                    self._sink_name, self._since_last, type(exc).__name__, exc,
                )
            except Exception:  # logging itself broken (closed stream): still never raise
                pass
            self._last_logged = now
            self._since_last = 0


class _Delivery:
    """Calls a synchronous sink inline."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.stats = SinkStats()
        self._errors = _ErrorReporter(sink.name)

    def offer(self, record: Any) -> None:
        self.stats.offered += 1
        try:
            self.sink.emit(record)
            self.stats.delivered += 1
        except Exception as exc:
            self.stats.errors += 1
            self._errors.report(exc)

    def flush(self, timeout: float) -> bool:
        return _safe_flush(self.sink, timeout, self._errors)

    def close(self, timeout: float) -> bool:
        ok = self.flush(timeout)
        _safe_close(self.sink, self._errors)
        return ok


class _QueuedDelivery(_Delivery):
    """A bounded queue and a daemon thread in front of a slow sink."""

    def __init__(self, sink: Sink, queue_size: int) -> None:
        super().__init__(sink)
        self._queue: collections.deque = collections.deque()
        self._queue_size = queue_size
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def offer(self, record: Any) -> None:
        stats = self.stats
        stats.offered += 1
        if self._closing or len(self._queue) >= self._queue_size:
            stats.dropped += 1
            return
        self._queue.append(record)
        if self._thread is None:
            self._start()
        if not self._wake.is_set():
            self._wake.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                t = threading.Thread(
                    target=self._run, name=f"elastiscope-sink-{self.sink.name}", daemon=True
                )
                t.start()
                self._thread = t

    def _run(self) -> None:
        queue, stats, sink = self._queue, self.stats, self.sink
        while True:
            self._wake.wait()
            self._wake.clear()
            while queue:
                record = queue.popleft()
                try:
                    sink.emit(record)
                    stats.delivered += 1
                except Exception as exc:
                    stats.errors += 1
                    self._errors.report(exc)
            with self._progress:
                self._progress.notify_all()
            if self._closing and not queue:
                return

    def _drained(self) -> bool:
        s = self.stats
        return s.delivered + s.errors + s.dropped >= s.offered

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._wake.set()
            with self._progress:
                while not self._drained():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._progress.wait(min(remaining, 0.05))
                    self._wake.set()
        return _safe_flush(self.sink, max(0.0, deadline - time.monotonic()), self._errors)

    def close(self, timeout: float) -> bool:
        ok = self.flush(timeout)
        self._closing = True
        self._wake.set()
        _safe_close(self.sink, self._errors)
        return ok


def _safe_flush(sink: Sink, timeout: float, errors: _ErrorReporter) -> bool:
    try:
        return bool(sink.flush(timeout))
    except Exception as exc:
        errors.report(exc)
        return False


def _safe_close(sink: Sink, errors: _ErrorReporter) -> None:
    try:
        sink.close()
    except Exception as exc:
        errors.report(exc)


# Destination names accepted by ``record(event, destination)``: torch's event handler names
# and ours. Each maps to a factory for the extra sink that destination adds (None: no extra
# output). Every event reaches the configured sinks whatever its destination.
def _console_destination() -> Sink:
    from telemetry.sinks.console import ConsoleEventSink

    return ConsoleEventSink()


def _framework_logger_destination() -> Sink:
    from telemetry.sinks.console import LoggingEventSink

    return LoggingEventSink("torchelastic.events")


DESTINATIONS: dict[str, Callable[[], Sink] | None] = {
    "null": None,
    "dynamic_rendezvous": None,
    "console": _console_destination,
    "framework_logger": _framework_logger_destination,
}


def register_destination(name: str, factory: Callable[[], Sink] | None) -> None:
    """Make ``name`` a valid ``record`` destination (None: accepted, adds no output)."""
    DESTINATIONS[name] = factory


class Pipeline:
    """Fans every record out to its sinks. ``publish`` never raises and never blocks."""

    def __init__(self, sinks: Iterable[Sink] = (), queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self._lock = threading.Lock()
        self._deliveries: tuple[_Delivery, ...] = ()
        self._destinations: dict[str, _Delivery | None] = {}
        self._unknown_destinations: set[str] = set()
        self.queue_size = queue_size
        self.closed = False
        for sink in sinks:
            self.add_sink(sink)

    # -- configuration -------------------------------------------------------------------
    def add_sink(self, sink: Sink, queue_size: int | None = None) -> Sink:
        delivery = self._make_delivery(sink, queue_size)
        with self._lock:
            self._deliveries = self._deliveries + (delivery,)
        return sink

    def remove_sink(self, sink: Sink | str, timeout: float = 5.0) -> None:
        with self._lock:
            gone = [d for d in self._deliveries if d.sink is sink or d.sink.name == sink]
            self._deliveries = tuple(d for d in self._deliveries if d not in gone)
        for d in gone:
            d.close(timeout)

    def sinks(self) -> list[Sink]:
        return [d.sink for d in self._deliveries]

    def find(self, name: str) -> Sink | None:
        for d in self._deliveries:
            if d.sink.name == name:
                return d.sink
        return None

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-sink counters (offered, delivered, dropped, errors), destinations included."""
        out = {d.sink.name: d.stats.as_dict() for d in self._deliveries}
        for d in self._destinations.values():
            if d is not None:
                out.setdefault(d.sink.name, d.stats.as_dict())
        return out

    def _make_delivery(self, sink: Sink, queue_size: int | None) -> _Delivery:
        if sink.synchronous:
            return _Delivery(sink)
        return _QueuedDelivery(sink, queue_size or self.queue_size)

    # -- the hot path --------------------------------------------------------------------
    def publish(self, record: Event | MetricPoint, destination: str | None = None) -> None:
        try:
            for delivery in self._deliveries:
                if delivery.sink.wants(record):
                    delivery.offer(record)
            if destination is not None and destination != "null":
                extra = self._destination(destination)
                if extra is not None:
                    extra.offer(record)
        except Exception:  # a bug of ours must not reach the training job either
            log.debug("telemetry publish failed", exc_info=True)

    def _destination(self, name: str) -> _Delivery | None:
        try:
            return self._destinations[name]
        except KeyError:
            pass
        with self._lock:
            if name in self._destinations:
                return self._destinations[name]
            if name not in DESTINATIONS:
                if name not in self._unknown_destinations:
                    self._unknown_destinations.add(name)
                    log.warning("unknown event destination %r: events still reach all sinks", name)
                return None
            factory = DESTINATIONS[name]
            delivery = None if factory is None else self._make_delivery(factory(), None)
            self._destinations[name] = delivery
            return delivery

    # -- shutdown ------------------------------------------------------------------------
    def _all_deliveries(self) -> list[_Delivery]:
        return list(self._deliveries) + [d for d in self._destinations.values() if d is not None]

    def flush(self, timeout: float = 5.0) -> bool:
        """Deliver everything published so far, waiting at most ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        ok = True
        for d in self._all_deliveries():
            ok = d.flush(max(0.0, deadline - time.monotonic())) and ok
        return ok

    def close(self, timeout: float = 5.0) -> bool:
        """Flush with a deadline, then close every sink. Later records are dropped and counted."""
        if self.closed:
            return True
        self.closed = True
        deadline = time.monotonic() + timeout
        ok = True
        for d in self._all_deliveries():
            ok = d.close(max(0.0, deadline - time.monotonic())) and ok
        return ok


_pipeline: Pipeline | None = None
_pipeline_lock = threading.Lock()


def _default_pipeline() -> Pipeline:
    from telemetry.sinks.memory import MemorySink

    return Pipeline([MemorySink()])


def get_pipeline() -> Pipeline:
    """The process-wide pipeline, created on first use with the default sinks."""
    global _pipeline
    p = _pipeline
    if p is None:
        with _pipeline_lock:
            if _pipeline is None:
                _pipeline = _default_pipeline()
                atexit.register(_close_at_exit)
            p = _pipeline
    return p


def set_pipeline(pipeline: Pipeline | None) -> Pipeline | None:
    """Install ``pipeline`` as the process-wide one; returns the previous one (not closed)."""
    global _pipeline
    with _pipeline_lock:
        previous, _pipeline = _pipeline, pipeline
        if pipeline is not None:
            atexit.unregister(_close_at_exit)
            atexit.register(_close_at_exit)
    return previous


def _close_at_exit() -> None:
    p = _pipeline
    if p is not None:
        p.close(timeout=5.0)
