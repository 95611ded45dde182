"""Pushgateway sink: pushes the Prometheus registry when a run ends, and once more on close.

For jobs that end before Prometheus would scrape them. Queued (a push is an HTTP request); a
failed push is counted as a sink error and logged once per burst like any sink failure.
"""

from __future__ import annotations

import socket
from typing import Any

from telemetry import names
from telemetry.records import Event
from telemetry.sink import Sink

__all__ = ["PushgatewaySink"]


class PushgatewaySink(Sink):
    name = "pushgateway"
    metrics = False
    # A push replaces the whole group, so only the latest matters: a short queue is plenty.
    queue_size = 64

    def __init__(self, url: str, job: str = "elastiscope", run_id: str | None = None,
                 timeout: float = 5.0, registry: Any = None) -> None:
        self.url = url
        # The Prometheus registry to push (the attached Prometheus sink's).
        self.registry = registry
        self.job = job
        self.timeout = timeout
        # One group per host: nodes of one job do not overwrite each other's series.
        self.grouping_key = {"instance": socket.gethostname()}

    def _push(self) -> None:
        from telemetry.prometheus.push import push  # prometheus_client: loaded on the first push

        push(self.registry, self.url, job=self.job, grouping_key=self.grouping_key, timeout=self.timeout)

    def emit(self, record: Event) -> None:
        if record.name == names.RUN_END:
            self._push()

    def close(self) -> None:
        self._push()
