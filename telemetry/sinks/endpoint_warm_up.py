"""A sink that warms a lazy endpoint up once the worker group turns HEALTHY."""

from __future__ import annotations

from typing import Any, Protocol

from telemetry.names import HEALTHY, STATE_CHANGE
from telemetry.sink import Sink

__all__ = ["WarmUpWhenHealthy"]


class WarmsUp(Protocol):
    """What this sink needs of the endpoint (``telemetry.endpoint.EndpointServer`` has it)."""

    def warm_up(self, delay: float = 0.0) -> None: ...


class WarmUpWhenHealthy(Sink):
    """A pipeline sink that warms a lazy endpoint up once the worker group turns HEALTHY.

    By then the agent is only watching its workers, so loading the web stack takes nothing
    from the job's start-up; ``delay`` leaves the workers' own start-up alone too.
    """

    name = "endpoint_warm_up"
    synchronous = True
    events = True
    metrics = False

    def __init__(self, server: WarmsUp, delay: float = 1.0) -> None:
        self._server = server
        self._delay = delay

    def wants(self, record: object) -> bool:
        return getattr(record, "name", None) == STATE_CHANGE

    def emit(self, record: Any) -> None:
        if record.metadata.get("state") == HEALTHY:
            self._server.warm_up(self._delay)
