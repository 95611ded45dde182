"""Events: torch-compatible records of what happened, and the two ways to publish them.

An :class:`Event` serializes to the same JSON as ``torch.distributed.elastic.events.Event``
(``{"name", "source", "timestamp", "metadata"}``), so torch's ``Event.deserialize`` reads
every line of our event log back. This module never imports torch.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Union

__all__ = ["EventSource", "Event", "EventMetadataValue", "record", "emit", "now_ms"]

EventMetadataValue = Union[str, int, float, bool, None]


class EventSource(str, Enum):
    """Who produced an event: the agent itself or one of its workers."""

    AGENT = "AGENT"
    WORKER = "WORKER"


@dataclass
class Event:
    """One thing that happened during a run.

    ``timestamp`` is milliseconds since the epoch. It defaults to 0 like torch's; ``record``
    and ``emit`` stamp the wall-clock time on events that arrive without one.
    """

    name: str
    source: EventSource
    timestamp: int = 0
    metadata: dict[str, EventMetadataValue] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.serialize()

    def serialize(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def deserialize(data: Union[str, bytes, "Event"]) -> "Event":
        if isinstance(data, Event):
            return data
        fields = json.loads(data)
        fields["source"] = EventSource[fields["source"]]
        return Event(**fields)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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
