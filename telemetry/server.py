"""Old home of the HTTP endpoint, kept only so existing imports keep working.

The endpoint lives in :mod:`telemetry.endpoint` now, and its warm-up sink in
:mod:`telemetry.sinks.endpoint_warm_up`; import from there. This module goes once its last
caller (``agent/cli.py``) has moved.
"""

from __future__ import annotations

from typing import Any

from telemetry import endpoint
from telemetry.endpoint import (
    EndpointError,
    EndpointServer,
    MetricsRenderer,
    StatusProvider,
    bind_socket,
    check_exposure,
    create_app,
    is_loopback,
    serve_app,
    start_endpoint,
)
from telemetry.names import WORKER_STATES
from telemetry.sinks.endpoint_warm_up import WarmUpWhenHealthy

__all__ = [
    "StatusProvider",
    "MetricsRenderer",
    "EndpointError",
    "WORKER_STATES",
    "is_loopback",
    "bind_socket",
    "create_app",
    "EndpointServer",
    "WarmUpWhenHealthy",
    "check_exposure",
    "serve_app",
    "start_endpoint",
]


def __getattr__(name: str) -> Any:  # the response models, built on first use as before
    return getattr(endpoint, name)
