"""The records that flow through the pipeline: events and metric points.

A leaf: imports nothing of ours and nothing from torch. An :class:`Event` serializes to the
same JSON as ``torch.distributed.elastic.events.Event`` (``{"name", "source", "timestamp",
"metadata"}``), so torch's ``Event.deserialize`` reads every line of our event log back.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import NamedTuple, Union

__all__ = ["EventSource", "Event", "EventMetadataValue", "MetricPoint", "now_ms"]

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



class MetricPoint(NamedTuple):
    """One value published through ``put_metric`` (same fields as torch's ``MetricData``)."""

    timestamp: float
    group_name: str
    name: str
    value: float
