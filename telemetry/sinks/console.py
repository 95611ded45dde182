"""Console outputs: the ``console`` and ``framework_logger`` destinations of ``record``, the
log-context binder, and the structlog event printer (``console_events``)."""

from __future__ import annotations

import logging
import sys
from types import MappingProxyType

from telemetry import logs, names
from telemetry.records import Event
from telemetry.sink import Sink

__all__ = ["ConsoleEventSink", "LoggingEventSink", "LogContextSink", "StructlogEventSink", "DESTINATIONS",
           "framework_logger_sink"]

# The logger torch's ``framework_logger`` event handler writes to.
FRAMEWORK_LOGGER = "torchelastic.events"


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
        names.RUN_START: ("run_id", "role", "group_rank"),
        names.RENDEZVOUS_COMPLETE: ("run_id", "role", "group_rank"),
    }

    def emit(self, record: Event) -> None:
        keys = self._KEYS.get(record.name)
        if keys is None:
            return
        md = record.metadata
        logs.bind(**{k: md[k] for k in keys if md.get(k) is not None})


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


def framework_logger_sink() -> Sink:
    """The ``framework_logger`` destination's output, as torch's handler of that name logs."""
    return LoggingEventSink(FRAMEWORK_LOGGER)


# The destinations of ``record`` these sinks serve (name -> factory of the extra sink); the
# composition root (telemetry.config) registers them.
DESTINATIONS = MappingProxyType({
    "console": ConsoleEventSink,
    "framework_logger": framework_logger_sink,
})
