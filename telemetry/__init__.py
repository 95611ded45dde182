"""Elastiscope telemetry: events, metrics, traces and the sinks they flow to.

Never imports torch or the agent; cheap to import. Heavy pieces (Prometheus exposition,
OpenTelemetry exporters, the HTTP server) load only when configured.
"""

from telemetry.config import ConfigError, configure, shutdown
from telemetry.events import Event, EventSource, emit, record
from telemetry.pipeline import Pipeline, Sink, SinkStats, get_pipeline, set_pipeline
from telemetry.events import put_metric
from telemetry.records import MetricPoint

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Event",
    "EventSource",
    "MetricPoint",
    "Pipeline",
    "Sink",
    "SinkStats",
    "configure",
    "emit",
    "get_pipeline",
    "put_metric",
    "record",
    "set_pipeline",
    "shutdown",
    "__version__",
]
