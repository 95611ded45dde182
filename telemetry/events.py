"""Events: torch-compatible records of what happened, and the two ways to publish them.

An :class:`Event` serializes to the same JSON as ``torch.distributed.elastic.events.Event``
(``{"name", "source", "timestamp", "metadata"}``), so torch's ``Event.deserialize`` reads
every line of our event log back. This module never imports torch.
"""

from __future__ import annotations

import time

from telemetry.records import Event, EventMetadataValue, EventSource, MetricPoint, now_ms

__all__ = ["EventSource", "Event", "EventMetadataValue", "record", "emit", "now_ms", "put_metric"]


def emit(event: Event) -> None:
    """Publish an Elastiscope event to every configured sink. Never raises, never blocks."""
    if not event.timestamp:
        event.timestamp = now_ms()
    from telemetry.pipeline import get_pipeline

    get_pipeline().publish(event)


def record(event: Event, destination: str = "null") -> None:
    """torch's ``record(event, destination)``: publish to every sink, and to ``destination``.

    Every event reaches the configured sinks whatever the destination, which is how code written
    for torchelastic gets Elastiscope's telemetry for free. ``destination`` names an extra output as
    torch's event handlers do: ``"null"`` adds nothing, ``"console"`` also prints the event's JSON to
    stderr, ``"framework_logger"`` also logs it through the stdlib logger ``torchelastic.events``.
    See ``telemetry.pipeline.DESTINATIONS`` for the full list.
    """
    if not event.timestamp:
        event.timestamp = now_ms()
    from telemetry.pipeline import get_pipeline

    get_pipeline().publish(event, destination)


def put_metric(metric_name: str, metric_value: float, metric_group: str = "torchelastic") -> None:
    """torch's ``put_metric``: publish one data point to every sink. Never raises, never blocks."""
    from telemetry.pipeline import get_pipeline

    get_pipeline().publish(MetricPoint(time.time(), metric_group, metric_name, metric_value))
