"""Elastiscope telemetry: events, metrics, traces and the sinks they flow to.

Never imports torch or the agent; cheap to import. Heavy pieces (Prometheus exposition,
OpenTelemetry exporters, the HTTP server) load only when configured.
"""

from telemetry.config import ConfigError, configure, shutdown
from telemetry.delivery import SinkStats
from telemetry.events import emit, put_metric, record
from telemetry.pipeline import Pipeline
from telemetry.records import Event, EventSource, MetricPoint
from telemetry.sink import Sink
from telemetry.state import get_pipeline, set_pipeline
from telemetry.version import __version__

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
