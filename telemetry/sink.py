"""What a sink is: the small object every record is delivered to.

A leaf: imports only the record types. The pipeline (policy) hands records to sinks
(transport); it never needs to know which concrete sinks exist.
"""

from __future__ import annotations

from telemetry.records import Event, MetricPoint

__all__ = ["Sink"]


class Sink:
    """Base class of every sink. Subclasses override ``emit`` and, where they buffer, ``flush``.

    ``events`` / ``metrics`` say which record types the sink takes; the pipeline does not hand
    it the others. A sink that overrides ``wants`` is asked about each record of those types;
    one that also overrides ``wants_point`` is asked that instead about the metric points
    published by their fields (``Pipeline.publish_metric``), before the record is built.
    ``synchronous`` sinks run on the producer's thread and must be cheap and
    thread-safe. ``queue_size`` (queued sinks only) overrides the pipeline's default.
    """

    name: str = "sink"
    synchronous: bool = False
    events: bool = True
    metrics: bool = True
    queue_size: int | None = None

    def emit(self, record: Event | MetricPoint) -> None:
        raise NotImplementedError

    def flush(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass

    def wants(self, record: object) -> bool:
        return self.events if isinstance(record, Event) else self.metrics

    def wants_point(self, group: str, name: str, value: object) -> bool:
        """``wants`` for the metric point with these fields, answered before it is built.

        Override it only together with ``wants``, and give the same answer: the pipeline asks
        one or the other, depending on how the point was published. It is for a sink that
        declines most points the agent publishes (the Prometheus sink skips repeats), so that
        a declined point costs no record at all.
        """
        return self.metrics
