"""The record types that flow through the pipeline besides :class:`telemetry.events.Event`."""

from __future__ import annotations

import time
from typing import NamedTuple

__all__ = ["MetricPoint", "put_metric"]


class MetricPoint(NamedTuple):
    """One value published through ``put_metric`` (same fields as torch's ``MetricData``)."""

    timestamp: float
    group_name: str
    name: str
    value: float


def put_metric(metric_name: str, metric_value: float, metric_group: str = "torchelastic") -> None:
    """torch's ``put_metric``: publish one data point to every sink. Never raises, never blocks."""
    from telemetry.pipeline import get_pipeline

    get_pipeline().publish(MetricPoint(time.time(), metric_group, metric_name, metric_value))
