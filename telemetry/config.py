"""``configure()``: the one place that turns settings into a running telemetry pipeline.

This is the composition root: the one module that knows the concrete sinks, picks them from the
settings, and records what it set up in ``telemetry.state``. Settings come from code (keyword
arguments) or from the environment; an argument left as None falls back to its ELASTISCOPE_*
variable:

    ELASTISCOPE_EVENT_LOG          file, or directory (existing, or ending in "/") for <dir>/<run_id>.jsonl
    ELASTISCOPE_LOG_FORMAT         auto | json | console
    ELASTISCOPE_OTLP_ENDPOINT      OTLP/HTTP base URL (the standard OTEL_EXPORTER_OTLP_* and
                                   OTEL_TRACES_EXPORTER=console also turn OpenTelemetry on)
    ELASTISCOPE_PUSHGATEWAY        Prometheus pushgateway URL
    ELASTISCOPE_CONSOLE_EVENTS     1 to print every event on the console too
    ELASTISCOPE_TELEMETRY_QUEUE_SIZE  per-sink queue bound (default 131072)

Bad settings raise ``ConfigError`` with a one-line message naming the setting.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlparse

from telemetry import logs, state
from telemetry.delivery import DEFAULT_QUEUE_SIZE
from telemetry.pipeline import Pipeline, Sink
from telemetry.sinks import console
from telemetry.sinks.jsonl import JsonlEventSink
from telemetry.sinks.memory import MemorySink
from telemetry.sinks.pushgateway import PushgatewaySink

__all__ = ["ConfigError", "TelemetrySettings", "resolve_settings", "configure", "shutdown", "render_metrics"]

# Every process keeps a ring of recent events (the endpoint's /events), and accepts torch's
# ``console`` and ``framework_logger`` destinations of ``record``.
state.set_defaults(event_ring=MemorySink, destinations=console.DESTINATIONS)


class ConfigError(ValueError):
    """A telemetry setting is invalid. The message is one line and names the setting."""


@dataclass(frozen=True)
class TelemetrySettings:
    event_log: Path | None = None
    event_log_is_directory: bool = False
    log_format: str = "auto"
    prometheus: bool = True
    otlp_endpoint: str | None = None
    # True when the endpoint came from us (argument / ELASTISCOPE_OTLP_ENDPOINT): a base URL to
    # which /v1/traces and /v1/logs are added. False: the OTEL_EXPORTER_OTLP_* variables rule.
    otlp_endpoint_explicit: bool = False
    otel_console: bool = False
    pushgateway: str | None = None
    run_id: str | None = None
    role: str | None = None
    console_events: bool = False
    queue_size: int = DEFAULT_QUEUE_SIZE
    otel_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def otel(self) -> bool:
        return bool(self.otlp_endpoint or self.otel_console)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _flag(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{name} must be 1/0/true/false, not {value!r}")


def _http_url(value: str, name: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{name} must be an http(s):// URL, not {value!r}")
    return value.rstrip("/")


def _event_log(value: str | os.PathLike, name: str) -> tuple[Path, bool]:
    text = os.fspath(value)
    if not text:
        raise ConfigError(f"{name} must be a file or directory path, not empty")
    path = Path(text).expanduser()
    is_directory = path.is_dir() or text.endswith(("/", os.sep))
    parent = path if is_directory else path.parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{name}: {existing} is not a directory, cannot hold {path}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{name}: directory {existing} is not writable")
    return path, is_directory


def _event_log_setting(
    event_log: str | os.PathLike | None, env: Mapping[str, str], name: str | None
) -> tuple[Path | None, bool]:
    """The event log argument, else its variable, checked; errors call it ``name``."""
    name = name or ("event log" if event_log is not None else "event log (ELASTISCOPE_EVENT_LOG)")
    event_log = event_log if event_log is not None else env.get("ELASTISCOPE_EVENT_LOG") or None
    if event_log is None:
        return None, False
    return _event_log(event_log, name)


def resolve_settings(
    *,
    event_log: str | os.PathLike | None = None,
    log_format: str | None = None,
    prometheus: bool = True,
    otlp_endpoint: str | None = None,
    pushgateway: str | None = None,
    run_id: str | None = None,
    role: str | None = None,
    console_events: bool = False,
    env: Mapping[str, str] = os.environ,
    event_log_name: str | None = None,
) -> TelemetrySettings:
    """Merge arguments with the environment and validate. Pure: touches no global state.
    ``event_log_name``: what errors call the event log setting (the caller's flag, say)."""
    log_path, is_dir = _event_log_setting(event_log, env, event_log_name)

    fmt = (log_format or env.get("ELASTISCOPE_LOG_FORMAT") or "auto").strip().lower()
    if fmt not in ("auto", "json", "console"):
        raise ConfigError(f"log format (ELASTISCOPE_LOG_FORMAT) must be auto, json or console, not {fmt!r}")

    endpoint = otlp_endpoint or env.get("ELASTISCOPE_OTLP_ENDPOINT") or None
    explicit = bool(endpoint)
    if endpoint:
        endpoint = _http_url(endpoint, "OTLP endpoint (ELASTISCOPE_OTLP_ENDPOINT)")
    otel_env = {k: v for k, v in env.items() if k.startswith("OTEL_")}
    if _flag(otel_env.get("OTEL_SDK_DISABLED", ""), "OTEL_SDK_DISABLED"):
        endpoint, otel_console = None, False
    else:
        exporters = {e.strip() for e in otel_env.get("OTEL_TRACES_EXPORTER", "").lower().split(",") if e.strip()}
        otel_console = "console" in exporters
        standard_endpoint = (otel_env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                             or otel_env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        if not endpoint and standard_endpoint and "none" not in exporters:
            # The exporters read the OTEL_* variables themselves; we only need to know it is on.
            endpoint = _http_url(standard_endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT")

    gateway = pushgateway or env.get("ELASTISCOPE_PUSHGATEWAY") or None
    if gateway:
        gateway = _http_url(gateway, "pushgateway (ELASTISCOPE_PUSHGATEWAY)")

    console = console_events or _flag(env.get("ELASTISCOPE_CONSOLE_EVENTS", ""), "ELASTISCOPE_CONSOLE_EVENTS")

    raw_size = env.get("ELASTISCOPE_TELEMETRY_QUEUE_SIZE", "")
    queue_size = DEFAULT_QUEUE_SIZE
    if raw_size.strip():
        try:
            queue_size = int(raw_size)
        except ValueError:
            queue_size = 0
        if queue_size <= 0:
            raise ConfigError(f"ELASTISCOPE_TELEMETRY_QUEUE_SIZE must be a positive integer, not {raw_size!r}")

    return TelemetrySettings(
        event_log=log_path, event_log_is_directory=is_dir, log_format=fmt, prometheus=bool(prometheus),
        otlp_endpoint=endpoint, otlp_endpoint_explicit=explicit and bool(endpoint), otel_console=otel_console, pushgateway=gateway, run_id=run_id,
        role=role, console_events=console, queue_size=queue_size, otel_env=otel_env,
    )


def configure(
    *,
    event_log: str | os.PathLike | None = None,
    log_format: str | None = None,
    prometheus: bool = True,
    otlp_endpoint: str | None = None,
    pushgateway: str | None = None,
    run_id: str | None = None,
    role: str | None = None,
    console_events: bool = False,
    env: Mapping[str, str] = os.environ,
    extra_sinks: Iterable[Sink] = (),
    log_stream: Any = None,
    exit_handlers: bool = True,
) -> Pipeline:
    """Install a new process-wide pipeline built from these settings and return it.

    Sinks: the process's event ring (``telemetry.state.event_ring``, so /events keeps its
    history), the log-context binder, Prometheus (unless ``prometheus=False``), the JSONL event
    log (if a path is set), OpenTelemetry spans and logs (if an endpoint or console exporter is
    set), the structlog event printer (``console_events``), the pushgateway, and
    ``extra_sinks``. /metrics renders the registry of the Prometheus sink that ends up attached
    (ours or one in ``extra_sinks``). The previous pipeline is flushed and closed. Exit paths
    (atexit, SIGTERM) flush and close the new one.
    torch's own metrics and rendezvous events are bridged by the agent (``agent.torch_patches``,
    applied when an agent is built), not here.
    """
    settings = resolve_settings(
        event_log=event_log, log_format=log_format, prometheus=prometheus, otlp_endpoint=otlp_endpoint,
        pushgateway=pushgateway, run_id=run_id, role=role, console_events=console_events, env=env,
    )
    pipeline = Pipeline(queue_size=settings.queue_size)
    sinks, tracing_handle = _sinks_for(settings, pipeline, extra_sinks)
    try:
        logs.configure_logging(settings.log_format, stream=log_stream, run_id=run_id, role=role)
    except ValueError as e:  # cannot happen after resolve_settings, but keep the contract
        raise ConfigError(str(e)) from None

    for sink in sinks:
        pipeline.add_sink(sink)
    if tracing_handle is not None:
        pipeline.stamp = tracing_handle.stamp
    _install(pipeline, settings, tracing_handle)
    if exit_handlers:
        state.install_exit_handlers()
    return pipeline


def _sinks_for(settings: TelemetrySettings, pipeline: Pipeline,
               extra_sinks: Iterable[Sink]) -> tuple[list[Sink], Any]:
    """The sinks the settings ask for, in delivery order, and the tracing handle (or None)."""
    sinks: list[Sink] = [state.event_ring(), console.LogContextSink()]
    prometheus = None
    if settings.prometheus:
        from telemetry.sinks.prometheus import PrometheusSink  # prometheus_client: heavy, optional

        # Its telemetry-health series count this pipeline's deliveries.
        prometheus = PrometheusSink(role=settings.role, stats_source=pipeline.stats)
        sinks.append(prometheus)
    if settings.event_log is not None:
        sinks.append(_event_log_sink(settings))
    tracing_handle = _setup_otel(settings) if settings.otel else None
    if tracing_handle is not None:
        sinks.append(tracing_handle.log_sink)
    if settings.console_events:
        sinks.append(console.StructlogEventSink())
    if settings.pushgateway and prometheus is not None:
        sinks.append(PushgatewaySink(settings.pushgateway, run_id=settings.run_id, registry=prometheus.registry))
    sinks.extend(extra_sinks)
    return sinks, tracing_handle


def _event_log_sink(settings: TelemetrySettings) -> JsonlEventSink:
    try:
        if settings.event_log_is_directory:
            return JsonlEventSink(directory=settings.event_log, run_id=settings.run_id)
        return JsonlEventSink(settings.event_log)
    except OSError as e:
        raise ConfigError(f"event log {settings.event_log}: {e.strerror or e}") from None


def _setup_otel(settings: TelemetrySettings) -> Any:
    from telemetry.sinks import otel  # opentelemetry: heavy, optional

    try:
        return otel.setup_otel(settings)
    except otel.ExporterUnavailable as e:
        raise ConfigError(str(e)) from None


def _install(pipeline: Pipeline, settings: TelemetrySettings, tracing_handle: Any) -> None:
    """Make ``pipeline`` the process's, close the one before, and remember what was set up."""
    old_handle = state.configured().get("tracing")
    previous = state.set_pipeline(pipeline)
    if previous is not None and previous is not pipeline:
        previous.close(timeout=1.0)
    if old_handle is not None and old_handle is not tracing_handle:
        old_handle.shutdown(1.0)
    prometheus = pipeline.find("prometheus")
    state.set_metrics_registry(None if prometheus is None else prometheus.registry)
    state.set_configured(settings=settings, tracing=tracing_handle)
    state.on_exit(_shutdown_extras)


def _shutdown_extras(timeout: float) -> None:
    handle = state.configured().get("tracing")
    if handle is not None:
        handle.shutdown(timeout)


def shutdown(timeout: float = 5.0) -> bool:
    """Flush every sink within ``timeout`` seconds, then close them and the tracer.

    Safe to call more than once and from any exit path. Returns False if the deadline passed
    before everything was delivered (what was left is counted as dropped).
    """
    deadline = time.monotonic() + timeout
    ok = state.get_pipeline().close(timeout=timeout)
    _shutdown_extras(max(0.0, deadline - time.monotonic()))
    return ok


def render_metrics(accept_header: str | None) -> tuple[bytes, str]:
    """/metrics: the attached Prometheus sink's registry as (body, content type), OpenMetrics if
    ``accept_header`` asks for it. Before any is attached, the catalogue's families, empty."""
    from telemetry.prometheus import exposition  # prometheus_client: heavy, loaded on first scrape

    registry = state.metrics_registry()
    if registry is None:
        from telemetry.prometheus.registry import AgentMetrics

        registry = AgentMetrics(lambda: state.get_pipeline().stats()).registry
        state.set_metrics_registry(registry)
    return exposition.render(registry, accept_header)
