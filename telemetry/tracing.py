"""Spans for the agent lifecycle. A no-op until tracing is configured, so it costs nothing by default.

The agent wraps each lifecycle step in ``span(name, **attributes)``. When OpenTelemetry is
configured (see ``telemetry.configure`` and ``telemetry.sinks.otel``), those become real spans
and ``traceparent()`` gives the W3C header that workers receive as ``TRACEPARENT``.

In a worker (a training script), ``worker_context()`` turns that ``TRACEPARENT`` into a parent
context, so the script's own spans join the agent's trace::

    from opentelemetry import trace
    from telemetry.tracing import worker_context

    with trace.get_tracer("train").start_as_current_span("epoch", context=worker_context()):
        ...
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, ContextManager, Mapping

from telemetry import state

__all__ = ["span", "traceparent", "set_tracer_hooks", "clear_tracer_hooks", "enabled", "worker_context",
           "TRACEPARENT_ENV"]

TRACEPARENT_ENV = "TRACEPARENT"


def set_tracer_hooks(
    span_factory: Callable[..., ContextManager[Any]] | None,
    traceparent_fn: Callable[[], str | None] | None,
) -> None:
    """Installed by the OpenTelemetry integration; ``None`` turns tracing back off."""
    state.set_tracer_hooks(span_factory, traceparent_fn)


def clear_tracer_hooks(span_factory: Callable[..., ContextManager[Any]]) -> None:
    """Turn tracing off if ``span_factory`` is still the installed one (a newer tracer stays)."""
    if state.span_factory() == span_factory:
        state.set_tracer_hooks(None, None)


def span(name: str, **attributes: Any) -> ContextManager[Any]:
    factory = state.span_factory()
    if factory is None:
        return contextlib.nullcontext()
    try:
        return factory(name, attributes)
    except Exception:
        return contextlib.nullcontext()


def traceparent() -> str | None:
    fn = state.traceparent_source()
    if fn is None:
        return None
    try:
        return fn()
    except Exception:
        return None


def enabled() -> bool:
    """True when spans are real (OpenTelemetry configured in this process)."""
    return state.span_factory() is not None


def worker_context(env: Mapping[str, str] | None = None) -> Any:
    """The agent's span as an OpenTelemetry parent context, from ``TRACEPARENT`` (and ``TRACESTATE``).

    Returns None when the variable is absent or malformed, which OpenTelemetry reads as "no
    parent": the worker's spans then start their own trace. Needs opentelemetry-api.
    """
    env = os.environ if env is None else env
    header = env.get(TRACEPARENT_ENV)
    if not header:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": header}
    if env.get("TRACESTATE"):
        carrier["tracestate"] = env["TRACESTATE"]
    ctx = TraceContextTextMapPropagator().extract(carrier)
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx
