"""OpenTelemetry: the agent's lifecycle as spans, its events as log records, over OTLP/HTTP.

``setup_otel(settings)`` builds a private TracerProvider and LoggerProvider (the process-wide
providers are left to the host application), picks exporters from the settings and the standard
``OTEL_*`` variables, and installs the span factory behind ``telemetry.tracing.span`` and
``traceparent``. It returns an ``OtelHandle`` whose ``log_sink`` the pipeline delivers events to
and whose ``shutdown(timeout)`` flushes both providers within a deadline.

The span tree follows the agent's calls to ``tracing.span`` (run -> rendezvous, start_workers,
restart -> ...) plus one derived span, ``monitoring``: from the end of each ``start_workers``
until the next restart, stop or exit barrier (or the end of the run), a child of ``run``.

Everything OpenTelemetry is imported here, and only when OpenTelemetry is configured.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any, Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, ConsoleLogRecordExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from telemetry import names, tracing
from telemetry.events import metadata_scalar
from telemetry.records import Event
from telemetry.sink import Sink
from telemetry.version import __version__

__all__ = ["setup_otel", "OtelHandle", "OtelLogSink", "AgentTracer", "ExporterUnavailable"]

_INSTRUMENTATION = "elastiscope"
# Steps that end the monitoring of the current workers.
_ENDS_MONITORING = frozenset({"restart", "stop_workers", "exit_barrier"})


class ExporterUnavailable(RuntimeError):
    """The OTLP exporter package is not installed (the message says how to install it)."""


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """OpenTelemetry attributes: scalars only, and no None (OpenTelemetry has no null)."""
    return {k: metadata_scalar(v) for k, v in values.items() if v is not None}


class AgentTracer:
    """The span factory and traceparent source installed into ``telemetry.tracing``."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        self._propagator = TraceContextTextMapPropagator()
        # Per thread: the run span's context and the open monitoring span, if any.
        self._local = threading.local()

    def span(self, name: str, attributes: Mapping[str, Any]) -> contextlib.AbstractContextManager:
        return self._span(name, _attributes(attributes))

    @contextlib.contextmanager
    def _span(self, name: str, attributes: dict[str, Any]) -> Iterator[Any]:
        local = self._local
        if name in _ENDS_MONITORING:
            self.end_monitoring()
        ok = False
        with self._tracer.start_as_current_span(name, attributes=attributes) as sp:
            if name == "run":
                local.run_context = otel_context.get_current()
                local.last_state = None
                sp.set_attributes(getattr(local, "run_attributes", None) or {})
            try:
                yield sp
                ok = True
            finally:
                if name == "run":
                    self.end_monitoring()
                    local.run_context = None
                    self._set_run_status(sp, getattr(local, "last_state", None))
        if ok and name == "start_workers":
            self._start_monitoring(attributes)

    @staticmethod
    def _set_run_status(span: Any, last_state: str | None) -> None:
        if last_state == names.SUCCEEDED:
            span.set_status(Status(StatusCode.OK))
        elif last_state in (names.FAILED, names.UNHEALTHY):
            span.set_status(Status(StatusCode.ERROR, f"worker group {last_state}"))

    def _start_monitoring(self, attributes: dict[str, Any]) -> None:
        local = self._local
        self.end_monitoring()
        parent = getattr(local, "run_context", None)
        local.monitoring = self._tracer.start_span("monitoring", context=parent,
                                                   attributes={k: v for k, v in attributes.items() if k == "role"})

    def end_monitoring(self) -> None:
        """End the open monitoring span of this thread, if any."""
        span = getattr(self._local, "monitoring", None)
        if span is not None:
            self._local.monitoring = None
            span.end()

    def traceparent(self) -> str | None:
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return carrier.get("traceparent")

    def on_event(self, event: Event) -> None:
        """Called on the producer's thread for every event, inside whatever span is current.

        Adds the span's ids to the event (so logs and traces correlate), records the event on
        the span as a span event, and picks up what the spans need from the agent's events:
        the run's identity (run_start comes just before the run span opens) and the group's
        last state (for the run span's status).
        """
        md = event.metadata
        local = self._local
        if event.name == names.RUN_START:
            local.run_attributes = _attributes({f"elastiscope.{k}": v for k, v in md.items()})
        elif event.name == names.STATE_CHANGE:
            local.last_state = md.get("state")
        span = trace.get_current_span()
        ctx = span.get_span_context()
        if ctx.is_valid:
            if "trace_id" not in md:
                md["trace_id"] = format(ctx.trace_id, "032x")
                md["span_id"] = format(ctx.span_id, "016x")
            span.add_event(event.name, _attributes(md), timestamp=int(event.timestamp) * 1_000_000 or None)


class OtelLogSink(Sink):
    """Sends each event as an OpenTelemetry log record (body: the event name; attributes: its
    metadata plus ``elastiscope.source``), tied to the span it happened in when it has one."""

    name = "otel_logs"
    metrics = False

    def __init__(self, logger_provider: Any) -> None:
        self._provider = logger_provider
        self._logger = logger_provider.get_logger(_INSTRUMENTATION)

    def emit(self, record: Event) -> None:
        md = record.metadata
        attributes = _attributes(md)
        attributes["elastiscope.source"] = getattr(record.source, "value", str(record.source))
        attributes["event.name"] = record.name
        trace_id = span_id = None
        try:
            if md.get("trace_id") and md.get("span_id"):
                trace_id, span_id = int(str(md["trace_id"]), 16), int(str(md["span_id"]), 16)
        except ValueError:
            pass
        failed = str(md.get("state", "")) == names.FAILED or record.name.endswith(".failed")
        kwargs = dict(
            timestamp=int(record.timestamp) * 1_000_000,
            severity_number=SeverityNumber.WARN if failed else SeverityNumber.INFO,
            severity_text="WARN" if failed else "INFO",
            body=record.name,
            attributes=attributes,
        )
        if trace_id:
            kwargs.update(trace_id=trace_id, span_id=span_id, trace_flags=trace.TraceFlags(1))
        self._logger.emit(LogRecord(**kwargs))

    def flush(self, timeout: float) -> bool:
        return _within(timeout, lambda: self._provider.force_flush(int(max(timeout, 0.001) * 1000)))


def _within(timeout: float, fn: Any) -> bool:
    """Run ``fn`` on a daemon thread and wait at most ``timeout`` seconds for it.

    The SDK's batch processors export on the flushing thread and the OTLP exporter retries
    with backoff for up to its own timeout (10 s by default), so a collector that is down
    would otherwise hold the agent's exit far past our deadline.
    """
    result: list[Any] = []

    def call() -> None:
        try:
            result.append(fn())
        except Exception:
            result.append(False)

    worker = threading.Thread(target=call, name="elastiscope-otel-flush", daemon=True)
    worker.start()
    worker.join(max(0.0, timeout))
    return bool(result and result[0] is not False)


class OtelHandle:
    """What ``setup_otel`` built: the log sink, the event stamper, and a deadline-bound shutdown."""

    def __init__(self, tracer_provider: TracerProvider, logger_provider: Any, agent_tracer: AgentTracer) -> None:
        self.tracer_provider = tracer_provider
        self.logger_provider = logger_provider
        self.agent_tracer = agent_tracer
        self.log_sink = OtelLogSink(logger_provider)
        self.stamp = agent_tracer.on_event
        self._shut = False

    def shutdown(self, timeout: float) -> bool:
        """Unhook tracing, flush and shut both providers down; never waits past ``timeout``."""
        if self._shut:
            return True
        self._shut = True
        tracing.clear_tracer_hooks(self.agent_tracer.span)
        self.agent_tracer.end_monitoring()

        def close() -> bool:
            for provider in (self.tracer_provider, self.logger_provider):
                provider.force_flush(int(max(timeout, 0.001) * 1000))
                provider.shutdown()
            return True

        return _within(timeout, close)


def _resource(env: Mapping[str, str]) -> Resource:
    attributes: dict[str, Any] = {
        "service.version": __version__,
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
    }
    if not env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "elastiscope-agent"
    return Resource.create(attributes)


def _otlp_exporters(settings: Any) -> tuple[Any, Any]:
    """(span exporter, log exporter) for OTLP/HTTP, with endpoints from the settings."""
    try:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ExporterUnavailable("OTLP export needs the 'otlp' extra: pip install 'elastiscope[otlp]'") from None
    env = settings.otel_env
    if settings.otlp_endpoint_explicit:
        base = settings.otlp_endpoint
        traces, logs = f"{base}/v1/traces", f"{base}/v1/logs"
    else:  # the standard variables: a signal's own endpoint is a full URL, the shared one a base
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").rstrip("/")
        traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (base and f"{base}/v1/traces") or None
        logs = env.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT") or (base and f"{base}/v1/logs") or None
    span_exporter = OTLPSpanExporter(endpoint=traces) if traces else None
    log_exporter = OTLPLogExporter(endpoint=logs) if logs else None
    return span_exporter, log_exporter


def setup_otel(settings: Any) -> OtelHandle:
    """Build providers and exporters for ``settings`` and install the tracing hooks."""
    env = settings.otel_env
    resource = _resource(env)
    # No atexit hooks of the SDK's own: they shut the providers down without a deadline, so a
    # collector that is down held the agent's exit for the exporters' full retry time (12 s+).
    # OtelHandle.shutdown, run by the pipeline's exit paths, flushes within our deadline.
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)

    span_exporter = log_exporter = None
    if settings.otlp_endpoint:
        span_exporter, log_exporter = _otlp_exporters(settings)
    if settings.otel_console:
        span_exporter = span_exporter or ConsoleSpanExporter()
    if "console" in env.get("OTEL_LOGS_EXPORTER", "").lower():
        log_exporter = log_exporter or ConsoleLogRecordExporter()
    if span_exporter is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    if log_exporter is not None:
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))

    agent_tracer = AgentTracer(tracer_provider.get_tracer(_INSTRUMENTATION))
    tracing.set_tracer_hooks(agent_tracer.span, agent_tracer.traceparent)
    return OtelHandle(tracer_provider, logger_provider, agent_tracer)
