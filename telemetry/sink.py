"""What a sink is: the small object every record is delivered to.

A leaf: imports only the record types. The pipeline (policy) hands records to sinks
(transport); it never needs to know which concrete sinks exist.
"""

from __future__ import annotations

from typing import Any, Callable

from telemetry.records import Event, MetricPoint

__all__ = ["Sink"]


class Sink:
    """Base class of every sink. Subclasses override ``emit`` and, where they buffer, ``flush``.

    ``events`` / ``metrics`` say which record types the sink wants; the pipeline does not hand
    it the others. ``synchronous`` sinks run on the producer's thread and must be cheap and
    thread-safe. ``queue_size`` (queued sinks only) overrides the pipeline's default.
    """

    name: str = "sink"
    synchronous: bool = False
    events: bool = True
    metrics: bool = True
    queue_size: int | None = None
    # Synchronous sinks only. ``repeat_key(point)`` names the piece of the sink's state a metric
    # point sets (None: the point must always be delivered); it may depend only on the point's
    # group and name (the pipeline remembers it per name). A point identical (group, name,
    # value) to the last one delivered under its key is then skipped, as long as nothing else
    # reached the sink in between: an event, a point without a key, or a failed emit forgets
    # every key. It must give one key to any two points that can change the same state. The
    # agent's run loop repeats the same few points ten times a second; this makes them cheap.
    repeat_key: Callable[[MetricPoint], Any] | None = None

    def emit(self, record: Event | MetricPoint) -> None:
        raise NotImplementedError

    def flush(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass

    def wants(self, record: object) -> bool:
        return self.events if isinstance(record, Event) else self.metrics
