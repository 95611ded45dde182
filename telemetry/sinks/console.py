"""Console outputs for the ``console`` and ``framework_logger`` destinations of ``record``."""

from __future__ import annotations

import logging
import sys

from telemetry.events import Event
from telemetry.pipeline import Sink

__all__ = ["ConsoleEventSink", "LoggingEventSink"]


class ConsoleEventSink(Sink):
    """Writes each event's torch JSON to stderr, as torch's ``console`` handler does."""

    name = "console"
    metrics = False

    def __init__(self, stream=None) -> None:
        self._stream = stream

    def emit(self, record: Event) -> None:
        stream = self._stream or sys.stderr
        stream.write(record.serialize() + "\n")

    def flush(self, timeout: float) -> bool:
        (self._stream or sys.stderr).flush()
        return True


class LoggingEventSink(Sink):
    """Hands each event's JSON to a stdlib logger, so the host application's logging decides."""

    metrics = False

    def __init__(self, logger_name: str) -> None:
        self.name = f"logger:{logger_name}"
        self._logger = logging.getLogger(logger_name)

    def emit(self, record: Event) -> None:
        self._logger.info(record.serialize())
