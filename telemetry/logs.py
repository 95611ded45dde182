"""The agent's own log lines, rendered by structlog: colours in a terminal, JSON lines elsewhere.

Code keeps using stdlib logging (``logging.getLogger(__name__)``); ``configure_logging`` puts one
structlog ``ProcessorFormatter`` handler on the ``agent`` and ``elastiscope`` logger trees, so
every line gets a timestamp, level, logger name and the run's identity (run id, role, group
rank). The identity is process-wide, not per-thread: the agent's monitor and server threads log
for the same run. ``bind()`` sets it; the ``LogContextSink`` keeps it current from events.

structlog is imported only when ``configure_logging`` runs.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from telemetry import state

__all__ = ["LOG_FORMATS", "LOGGER_TREES", "configure_logging", "bind", "bound", "resolve_format",
           "active_format", "unconfigure_logging"]

LOG_FORMATS = ("auto", "json", "console")
# Logger trees whose records we render: the agent's modules and our own.
LOGGER_TREES = ("agent", "elastiscope")



def bind(**values: Any) -> None:
    """Add (or with None, remove) keys on every log line from now on."""
    state.bind_log_context(values)


def bound() -> dict[str, Any]:
    return dict(state.log_context())


def _add_bound_context(logger: Any, method: str, event_dict: dict) -> dict:
    for k, v in list(state.log_context().items()):
        event_dict.setdefault(k, v)
    return event_dict


def resolve_format(log_format: str | None, stream: TextIO) -> str:
    """``auto`` means console when ``stream`` is a terminal, JSON otherwise."""
    fmt = (log_format or "auto").lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    if fmt == "auto":
        try:
            return "console" if stream.isatty() else "json"
        except Exception:
            return "json"
    return fmt


def _formatter(fmt: str, colors: bool) -> logging.Formatter:
    import structlog

    pre_chain = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        _add_bound_context,
    ]
    if fmt == "json":
        renderers = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(default=str)]
    else:
        renderers = [structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback, sort_keys=False)]
    return structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderers],
        foreign_pre_chain=pre_chain,
    )


class _StructlogHandler(logging.StreamHandler):
    """A StreamHandler that resolves the stream at emit time (stderr may be swapped by pytest)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream or sys.stderr)
        self._fixed_stream = stream
        self.log_format = "console"  # what configure_logging resolved "auto" to

    def emit(self, record: logging.LogRecord) -> None:
        if self._fixed_stream is None:
            self.stream = sys.stderr
        super().emit(record)


def configure_logging(
    log_format: str | None = "auto",
    *,
    stream: TextIO | None = None,
    level: int | str = logging.INFO,
    **context: Any,
) -> logging.Handler:
    """Render the agent's log lines with structlog. Idempotent: replaces its previous handler.

    ``context`` (run_id=..., role=..., group_rank=...) is bound onto every line. The logger
    trees stop propagating to the root logger so a line is not printed twice.
    ``telemetry.state.reset()`` undoes it.
    """
    target = stream or sys.stderr
    fmt = resolve_format(log_format, target)
    colors = fmt == "console" and _isatty(target)
    handler = _StructlogHandler(stream)
    handler.log_format = fmt
    handler.setFormatter(_formatter(fmt, colors))
    handler.set_name(f"elastiscope-{fmt}")
    unconfigure_logging()
    for name in LOGGER_TREES:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False
        if logger.level == logging.NOTSET:
            logger.setLevel(level)
    state.set_log_handler(handler)
    state.undo_on_reset(unconfigure_logging)
    bind(**context)
    return handler


def active_format() -> str | None:
    """The format our log lines are rendered in ("json" or "console"); None before
    ``configure_logging``. Other lines of ours (the CLI's status lines) follow it."""
    return getattr(state.log_handler(), "log_format", None)


def unconfigure_logging() -> None:
    """Remove our handler and give the logger trees back to the root logger."""
    handler = state.log_handler()
    if handler is None:
        return
    for name in LOGGER_TREES:
        logger = logging.getLogger(name)
        logger.removeHandler(handler)
        logger.propagate = True
    state.set_log_handler(None)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False
