"""Spans for the agent lifecycle. A no-op until tracing is configured, so it costs nothing by default.

The agent wraps each lifecycle step in ``span(name, **attributes)``. When OpenTelemetry is
configured (see ``telemetry.configure``), those become real spans and ``traceparent()`` gives
the W3C header that workers receive as ``TRACEPARENT``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

__all__ = ["span", "traceparent", "set_tracer_hooks"]

_span_factory: Callable[..., ContextManager[Any]] | None = None
_traceparent_fn: Callable[[], str | None] | None = None


def set_tracer_hooks(
    span_factory: Callable[..., ContextManager[Any]] | None,
    traceparent_fn: Callable[[], str | None] | None,
) -> None:
    """Installed by the OpenTelemetry integration; ``None`` turns tracing back off."""
    global _span_factory, _traceparent_fn
    _span_factory, _traceparent_fn = span_factory, traceparent_fn


def span(name: str, **attributes: Any) -> ContextManager[Any]:
    factory = _span_factory
    if factory is None:
        return contextlib.nullcontext()
    try:
        return factory(name, attributes)
    except Exception:
        return contextlib.nullcontext()


def traceparent() -> str | None:
    fn = _traceparent_fn
    if fn is None:
        return None
    try:
        return fn()
    except Exception:
        return None
