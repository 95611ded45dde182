"""Publishing: the functions the agent and user code call to hand records to the pipeline.

An :class:`Event` serializes to the same JSON as ``torch.distributed.elastic.events.Event``
(``{"name", "source", "timestamp", "metadata"}``), so torch's ``Event.deserialize`` reads
every line of our event log back. This module never imports torch.
"""

from __future__ import annotations

from typing import Any

from telemetry import state
from telemetry.records import Event, EventMetadataValue, EventSource, now_ms

__all__ = ["EventSource", "Event", "EventMetadataValue", "record", "emit", "now_ms", "put_metric",
           "publish_metric", "metadata_scalar"]


def emit(event: Event) -> None:
    """Publish an Elastiscope event to every configured sink. Never raises, never blocks."""
    if not event.timestamp:
        event.timestamp = now_ms()
    state.get_pipeline().publish(event)


def record(event: Event, destination: str = "null") -> None:
    """torch's ``record(event, destination)``: publish to every sink, and to ``destination``.

    Every event reaches the configured sinks whatever the destination, which is how code written
    for torchelastic gets Elastiscope's telemetry for free. ``destination`` names an extra output as
    torch's event handlers do: ``"null"`` adds nothing, ``"console"`` also prints the event's JSON to
    stderr, ``"framework_logger"`` also logs it through the stdlib logger ``torchelastic.events``.
    ``telemetry.state.register_destination`` adds names.
    """
    if not event.timestamp:
        event.timestamp = now_ms()
    state.get_pipeline().publish(event, destination)


def put_metric(metric_name: str, metric_value: float, metric_group: str = "torchelastic") -> None:
    """torch's ``put_metric``: publish one data point to every sink. Never raises, never blocks."""
    state.get_pipeline().publish_metric(metric_group, metric_name, metric_value)


def publish_metric(group: str, name: str, value: Any) -> None:
    """``put_metric`` with the group first, as the agent's own data points are written."""
    state.get_pipeline().publish_metric(group, name, value)


def metadata_scalar(value: Any) -> EventMetadataValue:
    """An event metadata value as a scalar every output can carry: None, str, int, float and
    bool as they are, anything else as its ``str``."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
