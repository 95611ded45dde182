"""Fan-out: every record to every sink that wants it. The producer never waits, never sees a failure.

A :class:`Pipeline` holds one delivery per sink (``telemetry.delivery``: inline for cheap
synchronous sinks, a bounded queue and a thread for the others) and the extra outputs that
``record(event, destination)`` names (:class:`Destinations`). It knows no concrete sink: the
composition root (``telemetry.config``) decides which sinks and destinations exist.

The process-wide pipeline lives in ``telemetry.state``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable, Mapping

from telemetry.delivery import DEFAULT_QUEUE_SIZE, Delivery, SinkStats, make_delivery
from telemetry.records import Event, MetricPoint
from telemetry.sink import Sink

__all__ = ["Sink", "Pipeline", "SinkStats", "Destinations", "DEFAULT_QUEUE_SIZE"]

log = logging.getLogger("elastiscope.telemetry")

# torch's destination names that add no output of their own: "null" (torch's default) and the
# rendezvous handler's "dynamic_rendezvous" (its events reach every sink like any other).
NO_OUTPUT_DESTINATIONS = ("null", "dynamic_rendezvous")


class Destinations:
    """Names accepted by ``record(event, destination)``, each with a factory for the extra sink
    that destination adds (None: accepted, adds no output). Every event reaches the configured
    sinks whatever its destination; docs/reference.md gives the meaning of each name."""

    def __init__(self, factories: Mapping[str, Callable[[], Sink] | None] = ()) -> None:
        self._factories: dict[str, Callable[[], Sink] | None] = dict.fromkeys(NO_OUTPUT_DESTINATIONS)
        self._factories.update(factories)

    def register(self, name: str, factory: Callable[[], Sink] | None) -> None:
        """Make ``name`` a valid destination (``factory`` None: accepted, adds no output)."""
        self._factories[name] = factory

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def factory(self, name: str) -> Callable[[], Sink] | None:
        return self._factories[name]


def _route(deliveries: Iterable[Delivery], record_type: type) -> tuple[tuple[Any, Any], ...]:
    """The fan-out for one record type, decided once per sink set instead of once per record:
    a ``(wants, offer)`` pair per sink that takes the type, ``wants`` None for a sink that takes
    every record of it.

    A sink's ``events`` / ``metrics`` flags say which record types it takes at all; a sink that
    also overrides ``Sink.wants`` is asked about each record of those types. So a sink that picks
    a few events costs nothing on the metric path, which the run loop takes ten times a second;
    and the pairs are called from the fan-out loop itself, with no wrapper call in between.
    """
    routed: list[tuple[Any, Any]] = []
    for delivery in deliveries:
        sink = delivery.sink
        if not (sink.events if record_type is Event else sink.metrics):
            continue
        routed.append((_picker(sink), delivery.offer))
    return tuple(routed)


def _picker(sink: Sink) -> Any:
    """``sink.wants`` if the sink overrides it (it picks records), None if it takes them all."""
    return sink.wants if type(sink).wants is not Sink.wants else None


def _route_fields(deliveries: Iterable[Delivery]) -> tuple[tuple[Any, Any, Any], ...]:
    """The fan-out for metric points published by their fields (``Pipeline.publish_metric``):
    a ``(wants_point, wants, offer)`` triple per sink that takes metric points. ``wants_point``
    is set for a sink that overrides ``Sink.wants_point`` (asked before the point is built,
    ``wants`` then None); otherwise ``wants`` is :func:`_picker`'s."""
    routed: list[tuple[Any, Any, Any]] = []
    for delivery in deliveries:
        sink = delivery.sink
        if not sink.metrics:
            continue
        if type(sink).wants_point is not Sink.wants_point:
            routed.append((sink.wants_point, None, delivery.offer))
        else:
            routed.append((None, _picker(sink), delivery.offer))
    return tuple(routed)


def _fan_out(routes: tuple[tuple[Any, Any], ...], record: Any) -> None:
    for wants, offer in routes:
        if wants is not None:
            try:
                if not wants(record):
                    continue
            except Exception:  # a sink that cannot say does not get the record, the others still do
                continue
        offer(record)


class Pipeline:
    """Fans every record out to its sinks. ``publish`` never raises and never blocks.

    ``stamp`` (optional) is called with each event before delivery; the tracing integration
    uses it to add the current trace_id/span_id to the event's metadata. ``destinations`` (the
    names ``record`` accepts) is the process's registry once the pipeline is installed, unless
    one was given here.
    """

    def __init__(self, sinks: Iterable[Sink] = (), queue_size: int = DEFAULT_QUEUE_SIZE,
                 destinations: Destinations | None = None) -> None:
        self._lock = threading.Lock()
        self._deliveries: tuple[Delivery, ...] = ()
        # Precomputed per record type so the hot path does no per-sink type checks.
        self._for_events: tuple[tuple[Any, Any], ...] = ()
        self._for_metrics: tuple[tuple[Any, Any], ...] = ()
        self._for_metric_fields: tuple[tuple[Any, Any, Any], ...] = ()
        self._destination_deliveries: dict[str, Delivery | None] = {}
        self._unknown_destinations: set[str] = set()
        self.destinations = destinations
        self.queue_size = queue_size
        self.stamp: Callable[[Event], None] | None = None
        self.closed = False
        for sink in sinks:
            self.add_sink(sink)

    # -- configuration -------------------------------------------------------------------
    def add_sink(self, sink: Sink, queue_size: int | None = None) -> Sink:
        delivery = self._make_delivery(sink, queue_size)
        with self._lock:
            deliveries = self._deliveries + (delivery,)
            self._for_events = _route(deliveries, Event)
            self._for_metrics = _route(deliveries, MetricPoint)
            self._for_metric_fields = _route_fields(deliveries)
            self._deliveries = deliveries
        return sink

    def _make_delivery(self, sink: Sink, queue_size: int | None) -> Delivery:
        return make_delivery(sink, queue_size or sink.queue_size or self.queue_size)

    def sinks(self) -> list[Sink]:
        return [d.sink for d in self._deliveries]

    def find(self, name: str) -> Sink | None:
        for d in self._deliveries:
            if d.sink.name == name:
                return d.sink
        return None

    def delivery(self, name: str) -> Delivery | None:
        """The delivery in front of the sink named ``name`` (its counters and lock), if any."""
        for d in self._deliveries:
            if d.sink.name == name:
                return d
        return None

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-sink counters (offered, delivered, dropped, errors), destinations included."""
        out = {d.sink.name: d.stats.as_dict() for d in self._deliveries}
        for d in list(self._destination_deliveries.values()):
            if d is not None:
                out.setdefault(d.sink.name, d.stats.as_dict())
        return out

    # -- the hot path --------------------------------------------------------------------
    def publish(self, record: Event | MetricPoint, destination: str | None = None) -> None:
        try:
            if type(record) is MetricPoint:
                _fan_out(self._for_metrics, record)
                return
            if isinstance(record, Event):
                if self.stamp is not None:
                    self.stamp(record)
                _fan_out(self._for_events, record)
            else:
                for d in self._deliveries:
                    if d.sink.wants(record):
                        d.offer(record)
            if destination is not None and destination != "null":
                extra = self._destination(destination)
                if extra is not None:
                    extra.offer(record)
        except Exception:  # a bug of ours must not reach the training job either
            log.debug("telemetry publish failed", exc_info=True)

    def publish_metric(self, group: str, name: str, value: Any) -> None:
        """``publish(MetricPoint(time.time(), group, name, value))``, building the point only
        if a sink takes it. Never raises, never blocks.

        The agent's run loop publishes four points each monitor pass, ten passes a second, and
        nearly all are repeats the Prometheus sink declines (``Sink.wants_point``): asked by
        their fields, a declined point costs no record, no clock read and no fan-out.
        """
        try:
            point = None
            for wants_point, wants, offer in self._for_metric_fields:
                try:
                    if wants_point is not None and not wants_point(group, name, value):
                        continue
                    if point is None:
                        point = MetricPoint(time.time(), group, name, value)
                    if wants is not None and not wants(point):
                        continue
                except Exception:  # a sink that cannot say does not get the point, the others still do
                    continue
                offer(point)
        except Exception:  # a bug of ours must not reach the training job either
            log.debug("telemetry publish failed", exc_info=True)

    def _destination(self, name: str) -> Delivery | None:
        try:
            return self._destination_deliveries[name]
        except KeyError:
            pass
        with self._lock:
            if name in self._destination_deliveries:
                return self._destination_deliveries[name]
            known = self.destinations is not None and name in self.destinations
            if not known:
                if name not in self._unknown_destinations:
                    self._unknown_destinations.add(name)
                    log.warning("unknown event destination %r: events still reach all sinks", name)
                return None
            factory = self.destinations.factory(name)  # type: ignore[union-attr]
            delivery = None if factory is None else self._make_delivery(factory(), None)
            self._destination_deliveries[name] = delivery
            return delivery

    # -- shutdown ------------------------------------------------------------------------
    def _all_deliveries(self) -> list[Delivery]:
        extras = [d for d in list(self._destination_deliveries.values()) if d is not None]
        return list(self._deliveries) + extras

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
        self.closed = True  # no lock: close may run in a signal handler (see QueuedDelivery.close)
        deadline = time.monotonic() + timeout
        deliveries = self._all_deliveries()
        for d in deliveries:
            d.wake()
        ok = True
        for d in deliveries:
            ok = d.close(max(0.0, deadline - time.monotonic())) and ok
        return ok

