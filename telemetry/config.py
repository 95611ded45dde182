"""``configure()``: the one place that turns settings into a running telemetry pipeline.

Settings come from code (keyword arguments), from CLI flags (``add_arguments`` /
``settings_from_args`` give every launcher the same flags), or from the environment; an
argument left as None falls back to its ELASTISCOPE_* variable:

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlparse

from telemetry.pipeline import DEFAULT_QUEUE_SIZE, Pipeline, Sink, get_pipeline, set_pipeline

__all__ = ["ConfigError", "TelemetrySettings", "resolve_settings", "configure", "shutdown",
           "add_arguments", "settings_from_args"]


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


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


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
) -> TelemetrySettings:
    """Merge arguments with the environment and validate. Pure: touches no global state."""
    event_log = event_log if event_log is not None else env.get("ELASTISCOPE_EVENT_LOG") or None
    log_path, is_dir = (None, False)
    if event_log is not None:
        log_path, is_dir = _event_log(event_log, "event log (ELASTISCOPE_EVENT_LOG)")

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


# What the last configure() set up beyond the pipeline, for shutdown().
_active: dict[str, Any] = {}


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
    bridge_torch: bool = True,
    extra_sinks: Iterable[Sink] = (),
    log_stream: Any = None,
    exit_handlers: bool = True,
) -> Pipeline:
    """Install a new process-wide pipeline built from these settings and return it.

    Sinks: the memory ring (kept from the previous pipeline, so /events keeps its history),
    the log-context binder, Prometheus (unless ``prometheus=False``), the JSONL event log (if a
    path is set), OpenTelemetry spans and logs (if an endpoint or console exporter is set), the
    structlog event printer (``console_events``), the pushgateway, and ``extra_sinks``. torch's
    metric handler and rendezvous events are bridged in (``bridge_torch``). The previous
    pipeline is flushed and closed. Exit paths (atexit, SIGTERM) flush and close the new one.
    """
    settings = resolve_settings(
        event_log=event_log, log_format=log_format, prometheus=prometheus, otlp_endpoint=otlp_endpoint,
        pushgateway=pushgateway, run_id=run_id, role=role, console_events=console_events, env=env,
    )
    from telemetry import logs
    from telemetry.pipeline import install_exit_handlers, on_exit
    from telemetry.sinks.console import LogContextSink, StructlogEventSink
    from telemetry.sinks.memory import MemorySink

    previous = get_pipeline()
    memory = previous.find("memory") if not previous.closed else None
    sinks: list[Sink] = [memory if isinstance(memory, MemorySink) else MemorySink(), LogContextSink()]
    tracing_handle = None
    try:
        if settings.prometheus:
            from telemetry import metrics
            from telemetry.sinks.prometheus import PrometheusSink

            prom = PrometheusSink(metrics.AgentMetrics(), role=role)
            metrics.set_current(prom.metrics)
            sinks.append(prom)
        if settings.event_log is not None:
            from telemetry.sinks.jsonl import JsonlEventSink

            try:
                if settings.event_log_is_directory:
                    sinks.append(JsonlEventSink(directory=settings.event_log, run_id=run_id))
                else:
                    sinks.append(JsonlEventSink(settings.event_log))
            except OSError as e:
                raise ConfigError(f"event log {settings.event_log}: {e.strerror or e}") from None
        if settings.otel:
            from telemetry.sinks.otel import setup_otel

            tracing_handle = setup_otel(settings)
            sinks.append(tracing_handle.log_sink)
        if settings.console_events:
            sinks.append(StructlogEventSink())
        if settings.pushgateway and settings.prometheus:
            from telemetry.sinks.pushgateway import PushgatewaySink

            sinks.append(PushgatewaySink(settings.pushgateway, run_id=run_id))
        sinks.extend(extra_sinks)
    except ConfigError:
        if tracing_handle is not None:
            tracing_handle.shutdown(1.0)
        raise

    try:
        logs.configure_logging(settings.log_format, stream=log_stream, run_id=run_id, role=role)
    except ValueError as e:  # cannot happen after resolve_settings, but keep the contract
        raise ConfigError(str(e)) from None

    pipeline = Pipeline(sinks, queue_size=settings.queue_size)
    if tracing_handle is not None:
        pipeline.stamp = tracing_handle.stamp
    old_handle = _active.get("tracing")
    set_pipeline(pipeline)
    if previous is not pipeline:
        previous.close(timeout=1.0)
    if old_handle is not None and old_handle is not tracing_handle:
        old_handle.shutdown(1.0)
    _active.clear()
    _active.update(settings=settings, tracing=tracing_handle)

    if bridge_torch:
        from telemetry import torch_bridge

        torch_bridge.install()
    on_exit(_shutdown_extras)
    if exit_handlers:
        install_exit_handlers()
    return pipeline


def _shutdown_extras(timeout: float) -> None:
    handle = _active.get("tracing")
    if handle is not None:
        handle.shutdown(timeout)


def shutdown(timeout: float = 5.0) -> bool:
    """Flush every sink within ``timeout`` seconds, then close them and the tracer.

    Safe to call more than once and from any exit path. Returns False if the deadline passed
    before everything was delivered (what was left is counted as dropped).
    """
    import time

    deadline = time.monotonic() + timeout
    ok = get_pipeline().close(timeout=timeout)
    _shutdown_extras(max(0.0, deadline - time.monotonic()))
    return ok


# -- CLI -----------------------------------------------------------------------------------

def add_arguments(parser: Any) -> Any:
    """Add the observability flags to an argparse parser; returns the argument group."""
    group = parser.add_argument_group("observability")
    group.add_argument("--event-log", default=None, metavar="PATH",
                       help="JSON Lines event log: a file, or a directory for <dir>/<run_id>.jsonl "
                            "(env ELASTISCOPE_EVENT_LOG)")
    group.add_argument("--log-format", default=None, choices=("auto", "json", "console"),
                       help="agent log lines: console colours, JSON lines, or auto by terminal "
                            "(env ELASTISCOPE_LOG_FORMAT)")
    group.add_argument("--no-prometheus", dest="prometheus", action="store_false",
                       help="do not keep Prometheus metrics")
    group.add_argument("--otlp-endpoint", default=None, metavar="URL",
                       help="send traces and event logs over OTLP/HTTP (env ELASTISCOPE_OTLP_ENDPOINT)")
    group.add_argument("--pushgateway", default=None, metavar="URL",
                       help="push metrics to this Prometheus pushgateway at the end of the run "
                            "(env ELASTISCOPE_PUSHGATEWAY)")
    group.add_argument("--console-events", action="store_true", default=False,
                       help="also print every event on the console")
    return group


def settings_from_args(args: Any) -> dict[str, Any]:
    """configure() keyword arguments from the flags ``add_arguments`` defined."""
    return {
        "event_log": args.event_log,
        "log_format": args.log_format,
        "prometheus": args.prometheus,
        "otlp_endpoint": args.otlp_endpoint,
        "pushgateway": args.pushgateway,
        "console_events": args.console_events,
    }
