"""Sinks and records the telemetry tests share."""

from __future__ import annotations

import threading

from telemetry.records import Event, EventSource
from telemetry.sink import Sink


def event(i: int = 0) -> Event:
    return Event("test.event", EventSource.AGENT, 1, {"i": i})


class GatedSink(Sink):
    """Blocks in emit until the gate opens; remembers what it got."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.received: list = []

    def emit(self, record) -> None:
        self.entered.set()
        self.gate.wait(10)
        self.received.append(record)
