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


class LogContextSink(Sink):
    """Keeps the identity on the agent's log lines current: run id and role from the run's
    start, group rank from each completed rendezvous. Synchronous: a dict lookup per event."""

    name = "log_context"
    synchronous = True
    metrics = False

    _KEYS = {
        "elastiscope.agent.run_start": ("run_id", "role", "group_rank"),
        "elastiscope.rendezvous.complete": ("run_id", "role", "group_rank"),
    }

    def emit(self, record: Event) -> None:
        keys = self._KEYS.get(record.name)
        if keys is None:
            return
        from telemetry.logs import bind

        md = record.metadata
        bind(**{k: md[k] for k in keys if md.get(k) is not None})


class StructlogEventSink(Sink):
    """Prints events through the structlog console (``console_events``): one line per event,
    its metadata as key-value pairs (console) or JSON fields (json)."""

    name = "console_events"
    metrics = False

    def __init__(self, logger_name: str = "elastiscope.events") -> None:
        self._logger = logging.getLogger(logger_name)

    def emit(self, record: Event) -> None:
        extra = {
            ("event_" + k if k in _RESERVED_LOG_KEYS else k): v for k, v in record.metadata.items()
        }
        extra["source"] = getattr(record.source, "value", record.source)
        self._logger.info(record.name, extra=extra)


# LogRecord attributes an ``extra`` key may not overwrite, plus keys structlog sets itself.
_RESERVED_LOG_KEYS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
) | {"message", "asctime", "event", "level", "logger", "timestamp"}
