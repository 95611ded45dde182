"""Sink registry and delivery: the producer never waits and never sees a sink's failure.

The split follows OpenTelemetry's SDK: a *sink* is transport (``emit``, ``flush``, ``close``);
this module is policy. Each slow sink gets a bounded queue and one delivery thread, in the
manner of ``BatchSpanProcessor``: ``publish`` appends and returns, a full queue drops the
record and counts it, and a sink that raises is counted and logged once per burst. Cheap
in-process sinks (``synchronous = True``) are called inline, still behind a ``try``.

Counters are exact under concurrent producers: each delivery updates its counters under one
uncontended lock (a fraction of a microsecond), so ``offered == delivered + errors + dropped``
holds once a pipeline is closed, and ``dropped`` is the true number of records a sink never saw.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Iterable

from telemetry.events import Event
from telemetry.records import MetricPoint
from telemetry.sink import Sink

__all__ = [
    "Sink",
    "Pipeline",
    "SinkStats",
    "DESTINATIONS",
    "register_destination",
    "get_pipeline",
    "set_pipeline",
    "publish_metric",
    "install_exit_handlers",
    "DEFAULT_QUEUE_SIZE",
]

log = logging.getLogger("elastiscope.telemetry")

DEFAULT_QUEUE_SIZE = 131_072
# Within a burst of failures a sink is reported once; a burst that lasts longer than this is
# reported again (with the count since), so a sink that never recovers still shows up in logs.
ERROR_LOG_INTERVAL_S = 30.0
# How long exit paths (atexit, SIGTERM) wait for queued records to reach their sinks.
EXIT_FLUSH_TIMEOUT_S = 5.0


class SinkStats:
    """Counters for one sink, read by the metrics exporter and by tests.

    ``offered``: records handed to the sink's delivery; ``delivered``: ``emit`` returned;
    ``errors``: ``emit`` raised; ``dropped``: never reached ``emit`` (queue full, or the
    pipeline closed before the record's turn came).
    """

    __slots__ = ("offered", "delivered", "dropped", "errors")

    def __init__(self) -> None:
        self.offered = 0
        self.delivered = 0
        self.dropped = 0
        self.errors = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class _ErrorReporter:
    """Logs a sink's failures once per burst instead of once per record.

    A burst starts with a failure after a success (or at the start) and ends with the next
    success; the recovery is logged with the number of failures in the burst.
    """

    def __init__(self, sink_name: str) -> None:
        self._sink_name = sink_name
        self._last_logged = float("-inf")
        self._unreported = 0
        self._in_burst = False

    def report(self, exc: BaseException) -> None:
        self._unreported += 1
        now = time.monotonic()
        if not self._in_burst or now - self._last_logged >= ERROR_LOG_INTERVAL_S:
            self._in_burst = True
            self._last_logged = now
            count, self._unreported = self._unreported, 0
            _log_quietly(
                logging.WARNING,
                "telemetry sink %r failed (%d time(s) since last report): %s: %s",
                self._sink_name, count, type(exc).__name__, exc,
            )

    def succeeded(self) -> None:
        if self._in_burst:
            self._in_burst = False
            count, self._unreported = self._unreported, 0
            _log_quietly(
                logging.INFO, "telemetry sink %r recovered (%d more failure(s) before that)",
                self._sink_name, count,
            )


def _log_quietly(level: int, msg: str, *args: Any) -> None:
    try:
        log.log(level, msg, *args)
    except Exception:  # logging itself broken (closed stream): still never raise
        pass


class _Delivery:
    """Calls a synchronous sink inline, on the producer's thread."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.stats = SinkStats()
        self._errors = _ErrorReporter(sink.name)
        self._count_lock = threading.Lock()

    def offer(self, record: Any) -> None:
        try:
            self.sink.emit(record)
        except Exception as exc:
            with self._count_lock:
                self.stats.offered += 1
                self.stats.errors += 1
            self._errors.report(exc)
            return
        with self._count_lock:
            self.stats.offered += 1
            self.stats.delivered += 1
        if self._errors._in_burst:
            self._errors.succeeded()

    def flush(self, timeout: float) -> bool:
        return _safe_flush(self.sink, timeout, self._errors)

    def close(self, timeout: float) -> bool:
        ok = self.flush(timeout)
        _safe_close(self.sink, self._errors)
        return ok


def _same(remembered: tuple | None, ident: tuple) -> bool:
    """The point ``ident`` is the one remembered; False if its value cannot say (an array)."""
    try:
        return bool(remembered == ident)
    except Exception:
        return False


class _RepeatSkippingDelivery(_Delivery):
    """A synchronous sink with a ``repeat_key``: points that would set what is already set are
    not handed to it again (they count as delivered: the sink's state is as if they had been).

    Every emit to the sink happens under one lock, so "the last point delivered under a key"
    and the sink's state cannot disagree when several threads publish.
    """

    # The names a pipeline sees are a small fixed set; this only guards against a caller that
    # invents a new name per point.
    MAX_NAMES = 10_000

    def __init__(self, sink: Sink, repeat_key: Callable[[MetricPoint], Any]) -> None:
        super().__init__(sink)
        self._repeat_key = repeat_key
        self._keys: dict[tuple[str, str], Any] = {}
        self._last: dict[Any, tuple] = {}
        # Reentrant: a signal handler that publishes may interrupt an emit on this thread.
        self._emit_lock = threading.RLock()

    def _key_of(self, point: MetricPoint) -> Any:
        try:
            key = self._repeat_key(point)
        except Exception:
            key = None
        if len(self._keys) < self.MAX_NAMES:
            self._keys[(point.group_name, point.name)] = key
        return key

    def offer(self, record: Any) -> None:
        key = None
        if type(record) is MetricPoint:
            try:
                key = self._keys[(record.group_name, record.name)]
            except KeyError:
                key = self._key_of(record)
        last, stats = self._last, self.stats
        # The emit lock also guards the counters here (every offer takes it anyway).
        with self._emit_lock:
            if key is None:
                if last:
                    last.clear()
            else:
                ident = (record.group_name, record.name, record.value)
                if _same(last.get(key), ident):
                    stats.offered += 1
                    stats.delivered += 1
                    return
            try:
                self.sink.emit(record)
            except Exception as exc:
                last.clear()  # what the failed emit left behind is unknown
                stats.offered += 1
                stats.errors += 1
                failure = exc
            else:
                if key is not None:
                    last[key] = ident
                stats.offered += 1
                stats.delivered += 1
                failure = None
        if failure is not None:
            self._errors.report(failure)
        elif self._errors._in_burst:
            self._errors.succeeded()

    def skip_repeat(self, group: str, name: str, value: Any) -> bool:
        """Count the point as delivered and return True if ``offer`` would skip it as a repeat."""
        key = self._keys.get((group, name))
        if key is None:  # a name not seen yet, or one that must always be delivered
            return False
        with self._emit_lock:
            if not _same(self._last.get(key), (group, name, value)):
                return False
            self.stats.offered += 1
            self.stats.delivered += 1
        return True


class _QueuedDelivery(_Delivery):
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
        with self._count_lock:
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
        queue, stats, sink, errors = self._queue, self.stats, self.sink, self._errors
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                try:
                    record = queue.popleft()
                except IndexError:
                    break
                try:
                    sink.emit(record)
                except Exception as exc:
                    stats.errors += 1  # only this thread writes delivered/errors
                    errors.report(exc)
                    continue
                stats.delivered += 1
                if errors._in_burst:
                    errors.succeeded()
            with self._progress:
                self._progress.notify_all()
            if self._closing:
                return

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
        return _safe_flush(self.sink, max(0.0, deadline - time.monotonic()), self._errors)

    def close(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        ok = self.flush(timeout)
        # When close runs in a signal handler, the interrupted main thread may hold this lock
        # (in offer); waiting for it would deadlock, so after a moment we go on without it.
        locked = self._count_lock.acquire(timeout=0.1)
        try:
            self._closing = True
            # What the deadline left in the queue will never be delivered: count it as dropped.
            abandoned = 0
            while True:
                try:
                    self._queue.popleft()
                except IndexError:
                    break
                abandoned += 1
            self.stats.dropped += abandoned
        finally:
            if locked:
                self._count_lock.release()
        if abandoned:
            _log_quietly(
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
# output). Every event reaches the configured sinks whatever its destination; the full
# meaning of each name is in docs/reference.md.
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
    """Fans every record out to its sinks. ``publish`` never raises and never blocks.

    ``stamp`` (optional) is called with each event before delivery; the tracing integration
    uses it to add the current trace_id/span_id to the event's metadata.
    """

    def __init__(self, sinks: Iterable[Sink] = (), queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self._lock = threading.Lock()
        self._deliveries: tuple[_Delivery, ...] = ()
        # Precomputed per record type so the hot path does no per-sink type checks.
        self._for_events: tuple[_Delivery, ...] = ()
        self._for_metrics: tuple[_Delivery, ...] = ()
        self._repeat_skipper: _RepeatSkippingDelivery | None = None
        self._destinations: dict[str, _Delivery | None] = {}
        self._unknown_destinations: set[str] = set()
        self.queue_size = queue_size
        self.stamp: Callable[[Event], None] | None = None
        self.closed = False
        for sink in sinks:
            self.add_sink(sink)

    # -- configuration -------------------------------------------------------------------
    def add_sink(self, sink: Sink, queue_size: int | None = None) -> Sink:
        delivery = self._make_delivery(sink, queue_size)
        with self._lock:
            self._set_deliveries(self._deliveries + (delivery,))
        return sink

    def remove_sink(self, sink: Sink | str, timeout: float = 5.0) -> None:
        with self._lock:
            gone = [d for d in self._deliveries if d.sink is sink or d.sink.name == sink]
            self._set_deliveries(tuple(d for d in self._deliveries if d not in gone))
        for d in gone:
            d.close(timeout)

    def _set_deliveries(self, deliveries: tuple[_Delivery, ...]) -> None:
        self._deliveries = deliveries
        self._for_events = tuple(d for d in deliveries if d.sink.events)
        self._for_metrics = tuple(d for d in deliveries if d.sink.metrics)
        # publish_metric's shortcut: one metric sink, and it skips repeats.
        only = self._for_metrics[0] if len(self._for_metrics) == 1 else None
        self._repeat_skipper = only if isinstance(only, _RepeatSkippingDelivery) else None

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
        for d in list(self._destinations.values()):
            if d is not None:
                out.setdefault(d.sink.name, d.stats.as_dict())
        return out

    def _make_delivery(self, sink: Sink, queue_size: int | None) -> _Delivery:
        if sink.synchronous:
            repeat_key = getattr(sink, "repeat_key", None)
            if repeat_key is not None and sink.metrics:
                return _RepeatSkippingDelivery(sink, repeat_key)
            return _Delivery(sink)
        return _QueuedDelivery(sink, queue_size or sink.queue_size or self.queue_size)

    # -- the hot path --------------------------------------------------------------------
    def publish(self, record: Event | MetricPoint, destination: str | None = None) -> None:
        try:
            if type(record) is MetricPoint:
                for delivery in self._for_metrics:
                    delivery.offer(record)
                return
            if isinstance(record, Event):
                if self.stamp is not None:
                    self.stamp(record)
                deliveries = self._for_events
            else:
                deliveries = tuple(d for d in self._deliveries if d.sink.wants(record))
            for delivery in deliveries:
                delivery.offer(record)
            if destination is not None and destination != "null":
                extra = self._destination(destination)
                if extra is not None:
                    extra.offer(record)
        except Exception:  # a bug of ours must not reach the training job either
            log.debug("telemetry publish failed", exc_info=True)

    def publish_metric(self, group: str, name: str, value: Any) -> None:
        """``publish(MetricPoint(time.time(), group, name, value))``; when the one sink that
        takes metrics would skip the point as a repeat (see ``Sink.repeat_key``), it is only
        counted, without building the record. Never raises, never blocks."""
        try:
            skipper = self._repeat_skipper
            if skipper is not None and skipper.skip_repeat(group, name, value):
                return
            self.publish(MetricPoint(time.time(), group, name, value))
        except Exception:
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
        return list(self._deliveries) + [d for d in list(self._destinations.values()) if d is not None]

    def flush(self, timeout: float = 5.0) -> bool:
        """Deliver everything published so far, waiting at most ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        ok = True
        for d in self._all_deliveries():
            ok = d.flush(max(0.0, deadline - time.monotonic())) and ok
        return ok

    def close(self, timeout: float = 5.0) -> bool:
        """Flush with a deadline, then close every sink. Later records are dropped and counted.

        The deadline is shared: queued sinks drain in parallel (each has its own thread), so
        one slow sink does not eat the others' time before they were even asked.
        """
        if self.closed:
            return True
        self.closed = True  # no lock: close may run in a signal handler (see _QueuedDelivery.close)
        deadline = time.monotonic() + timeout
        deliveries = self._all_deliveries()
        for d in deliveries:
            if isinstance(d, _QueuedDelivery):
                d._wake.set()
        ok = True
        for d in deliveries:
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


def publish_metric(group: str, name: str, value: Any) -> None:
    """``get_pipeline().publish_metric(group, name, value)``: see :meth:`Pipeline.publish_metric`."""
    (_pipeline or get_pipeline()).publish_metric(group, name, value)


def set_pipeline(pipeline: Pipeline | None) -> Pipeline | None:
    """Install ``pipeline`` as the process-wide one; returns the previous one (not closed)."""
    global _pipeline
    with _pipeline_lock:
        previous, _pipeline = _pipeline, pipeline
        if pipeline is not None:
            atexit.unregister(_close_at_exit)
            atexit.register(_close_at_exit)
    return previous


_exit_callbacks: list[Callable[[float], None]] = []


def on_exit(callback: Callable[[float], None]) -> None:
    """Run ``callback(timeout)`` on every exit path, after the pipeline is flushed and closed.

    For resources outside the pipeline that need a last flush (the tracer provider, the
    pushgateway). Each callback is guarded; one that raises does not stop the others.
    """
    if callback not in _exit_callbacks:
        _exit_callbacks.append(callback)


def _close_at_exit(timeout: float = EXIT_FLUSH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    p = _pipeline
    if p is not None:
        try:
            p.close(timeout=timeout)
        except Exception:
            pass
    for callback in list(_exit_callbacks):
        try:
            callback(max(0.0, deadline - time.monotonic()))
        except Exception:
            pass


# -- signals ---------------------------------------------------------------------------------
# A process killed by SIGTERM's default action runs no atexit hooks, so queued records would
# be lost. Where SIGTERM still has its default action we install a handler that flushes and
# then dies by the same signal (the exit status stays "killed by SIGTERM"). SIGINT needs
# nothing: Python's default handler raises KeyboardInterrupt and the unwinding runs atexit.
# Handlers that others installed (torch's agent raises SignalException) are left alone:
# they unwind the stack too, and atexit flushes.
_handled_signals: set[int] = set()


def _flush_then_die(signum: int, frame: Any) -> None:
    _close_at_exit()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_exit_handlers() -> list[str]:
    """Flush-on-exit for SIGTERM (and SIGINT if it was set to the default action).

    Returns the signals handled. Only possible from the main thread; elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        return []
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            current = signal.getsignal(sig)
            if current is signal.SIG_DFL or sig in _handled_signals and current is _flush_then_die:
                signal.signal(sig, _flush_then_die)
                _handled_signals.add(sig)
                installed.append(sig.name)
        except (ValueError, OSError):  # not the main interpreter, or an exotic platform
            pass
    return installed
