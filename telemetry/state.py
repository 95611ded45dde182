"""The process's telemetry state, in one place, with one ``reset()``.

Everything telemetry keeps for the life of the process lives here and nowhere else: the
pipeline every record goes through, the ring of recent events the endpoint serves, the registry
``/metrics`` renders, the tracer hooks, the identity bound onto log lines, what ``configure()``
set up, the names ``record`` accepts as destinations, and the exit paths (atexit, SIGTERM) that
flush it all. Other modules read and write it through the functions below; ``configure()``
fills it and :func:`reset` puts it back as a fresh process has it, closing what is open
(tests call it after each test).
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from typing import Any, Callable, ContextManager, Mapping

from telemetry.pipeline import Destinations, Pipeline, Sink

__all__ = [
    "get_pipeline", "set_pipeline", "event_ring", "metrics_registry", "set_metrics_registry",
    "register_destination", "set_defaults", "span_factory", "traceparent_source",
    "set_tracer_hooks", "log_context", "bind_log_context", "log_handler", "set_log_handler",
    "configured", "set_configured", "on_exit", "undo_on_reset", "install_exit_handlers",
    "close_at_exit", "reset", "EXIT_FLUSH_TIMEOUT_S",
]

# How long exit paths (atexit, SIGTERM) wait for queued records to reach their sinks.
EXIT_FLUSH_TIMEOUT_S = 5.0
# How long reset() gives the pipeline it closes: tests call it after each test.
RESET_CLOSE_TIMEOUT_S = 2.0


class _State:
    """One process's telemetry state; a fresh one is what a new process has."""

    def __init__(self, builtin_destinations: Mapping[str, Callable[[], Sink] | None]) -> None:
        self.pipeline: Pipeline | None = None
        self.event_ring: Sink | None = None
        # The CollectorRegistry /metrics renders: the attached Prometheus sink's (None: none yet).
        self.metrics_registry: Any = None
        self.destinations = Destinations(builtin_destinations)
        self.span_factory: Callable[..., ContextManager[Any]] | None = None
        self.traceparent_source: Callable[[], str | None] | None = None
        self.log_context: dict[str, Any] = {}
        self.log_handler: Any = None  # the logging.Handler configure_logging installed
        # What the last configure() set up beyond the pipeline (settings, tracing handle), for
        # shutdown() and for the next configure().
        self.configured: dict[str, Any] = {}
        self.exit_callbacks: list[Callable[[float], None]] = []
        # Undone by reset(), newest first: process-wide changes made outside this module.
        self.undo_actions: list[Callable[[], None]] = []
        self.handled_signals: set[int] = set()


# What every fresh state starts with, named once by the composition root (telemetry.config, which
# the package imports first) so that this module knows no concrete sink: the event ring's
# factory and the built-in destinations.
_builtin_destinations: dict[str, Callable[[], Sink] | None] = {}
_event_ring_factory: Callable[[], Sink] | None = None
_lock = threading.RLock()  # reentrant: a signal handler may interrupt a holder on this thread
_log_context_lock = threading.Lock()
_state = _State(_builtin_destinations)


# -- the pipeline ----------------------------------------------------------------------------

def set_defaults(*, event_ring: Callable[[], Sink],
                 destinations: Mapping[str, Callable[[], Sink] | None]) -> None:
    """What a fresh process has: ``event_ring()`` builds the ring of recent events (the memory
    sink), ``destinations`` are the built-in ``record`` destinations. Called by telemetry.config."""
    global _event_ring_factory
    _event_ring_factory = event_ring
    _builtin_destinations.update(destinations)
    for name, factory in destinations.items():
        _state.destinations.register(name, factory)


def event_ring() -> Any:
    """The ring of recent events (a MemorySink: the endpoint's /events and /status), one per
    process until ``reset()``.

    Every pipeline the process installs through ``configure()`` delivers to this same ring, so
    its history outlives reconfiguration; the endpoint is handed it explicitly.
    """
    ring = _state.event_ring
    if ring is None:
        with _lock:
            if _state.event_ring is None:
                if _event_ring_factory is None:  # only if telemetry.config was never imported
                    raise RuntimeError("telemetry.config names the event ring; import telemetry first")
                _state.event_ring = _event_ring_factory()
            ring = _state.event_ring
    return ring


def get_pipeline() -> Pipeline:
    """The process-wide pipeline, created on first use with the default sink (the event ring)."""
    p = _state.pipeline
    if p is None:
        with _lock:
            if _state.pipeline is None:
                _install(Pipeline([event_ring()]))
            p = _state.pipeline
    return p  # type: ignore[return-value]


def set_pipeline(pipeline: Pipeline | None) -> Pipeline | None:
    """Install ``pipeline`` as the process-wide one; returns the previous one (not closed).

    A pipeline built without its own destinations gets the process's (see
    :func:`register_destination`).
    """
    with _lock:
        previous = _state.pipeline
        if pipeline is None:
            _state.pipeline = None
        else:
            _install(pipeline)
    return previous


def _install(pipeline: Pipeline) -> None:
    if pipeline.destinations is None:
        pipeline.destinations = _state.destinations
    _state.pipeline = pipeline
    # Registered again each time so it runs after the callbacks registered since (LIFO).
    atexit.unregister(close_at_exit)
    atexit.register(close_at_exit)


def register_destination(name: str, factory: Callable[[], Sink] | None) -> None:
    """Make ``name`` a valid ``record`` destination (None: accepted, adds no output)."""
    _state.destinations.register(name, factory)


# -- /metrics ----------------------------------------------------------------------------------

def metrics_registry() -> Any:
    """The Prometheus registry /metrics renders, or None while no Prometheus sink is attached."""
    return _state.metrics_registry


def set_metrics_registry(registry: Any) -> None:
    _state.metrics_registry = registry


# -- tracing ---------------------------------------------------------------------------------

def span_factory() -> Callable[..., ContextManager[Any]] | None:
    return _state.span_factory


def traceparent_source() -> Callable[[], str | None] | None:
    return _state.traceparent_source


def set_tracer_hooks(factory: Callable[..., ContextManager[Any]] | None,
                     traceparent: Callable[[], str | None] | None) -> None:
    _state.span_factory, _state.traceparent_source = factory, traceparent


# -- log lines -------------------------------------------------------------------------------

def log_context() -> dict[str, Any]:
    """The identity bound onto every log line (the live dict: read it, change it through bind)."""
    return _state.log_context


def bind_log_context(values: Mapping[str, Any]) -> None:
    """Add keys to the log context; a None value removes its key."""
    with _log_context_lock:
        context = _state.log_context
        for k, v in values.items():
            if v is None:
                context.pop(k, None)
            else:
                context[k] = v


def log_handler() -> Any:
    return _state.log_handler


def set_log_handler(handler: Any) -> None:
    _state.log_handler = handler


# -- what configure() set up -----------------------------------------------------------------

def configured() -> dict[str, Any]:
    """What the last ``configure()`` set up beyond the pipeline: ``settings``, ``tracing``."""
    return dict(_state.configured)


def set_configured(**parts: Any) -> None:
    _state.configured = dict(parts)


def undo_on_reset(action: Callable[[], None]) -> None:
    """Have :func:`reset` call ``action()`` (for a process-wide change made outside telemetry's
    state, e.g. a patch of a third-party module). Actions run newest first."""
    with _lock:
        if action not in _state.undo_actions:
            _state.undo_actions.append(action)


# -- exit paths ------------------------------------------------------------------------------

def on_exit(callback: Callable[[float], None]) -> None:
    """Run ``callback(timeout)`` on every exit path, after the pipeline is flushed and closed.

    For resources outside the pipeline that need a last flush (the tracer provider, the
    pushgateway). Each callback is guarded; one that raises does not stop the others.
    """
    if callback not in _state.exit_callbacks:
        _state.exit_callbacks.append(callback)


def close_at_exit(timeout: float = EXIT_FLUSH_TIMEOUT_S) -> None:
    """Close the pipeline, then run the exit callbacks, all within ``timeout``. Never raises."""
    deadline = time.monotonic() + timeout
    p = _state.pipeline
    if p is not None:
        try:
            p.close(timeout=timeout)
        except Exception:
            pass
    for callback in list(_state.exit_callbacks):
        try:
            callback(max(0.0, deadline - time.monotonic()))
        except Exception:
            pass


# A process killed by SIGTERM's default action runs no atexit hooks, so queued records would
# be lost. Where SIGTERM still has its default action we install a handler that flushes and
# then dies by the same signal (the exit status stays "killed by SIGTERM"). SIGINT needs
# nothing: Python's default handler raises KeyboardInterrupt and the unwinding runs atexit.
# Handlers that others installed (torch's agent raises SignalException) are left alone:
# they unwind the stack too, and atexit flushes.
def _flush_then_die(signum: int, frame: Any) -> None:
    close_at_exit()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_exit_handlers() -> list[str]:
    """Flush-on-exit for SIGTERM (and SIGINT if it was set to the default action).

    Returns the signals handled. Only possible from the main thread; elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        return []
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            current = signal.getsignal(sig)
            if current is signal.SIG_DFL or sig in _state.handled_signals and current is _flush_then_die:
                signal.signal(sig, _flush_then_die)
                _state.handled_signals.add(sig)
                installed.append(sig.name)
        except (ValueError, OSError):  # not the main interpreter, or an exotic platform
            pass
    return installed


def _restore_signals(signals: set[int]) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in signals:
        try:
            if signal.getsignal(sig) is _flush_then_die:
                signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):
            pass


# -- reset -----------------------------------------------------------------------------------

def reset() -> None:
    """Put telemetry back as a fresh process has it: run the undo actions (the log handler's,
    and any registered with :func:`undo_on_reset`), close the pipeline and the tracer, give the
    signals back, forget the rest."""
    global _state
    old = _state
    atexit.unregister(close_at_exit)
    # Undo actions and exit callbacks still see the old state: they read what they set up.
    for action in reversed(old.undo_actions):
        try:
            action()
        except Exception:
            pass
    close_at_exit(RESET_CLOSE_TIMEOUT_S)
    _restore_signals(old.handled_signals)
    with _lock:
        _state = _State(_builtin_destinations)
