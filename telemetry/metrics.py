"""Transitional: the old single home of everything Prometheus, now split into
``telemetry.prometheus`` (catalogue, classify, registry, exposition, push) and
``telemetry.sinks.prometheus`` (the sink, which owns its registry).

Kept only for the callers that still use the old names: telemetry/config.py (AgentMetrics,
set_current), telemetry/server.py (exposition), telemetry/sinks/pushgateway.py (push),
tests/test_pipeline.py and tests/telemetry_jobs.py. Delete this module once none of them
imports it; /metrics then renders the attached sink's registry through the state holder.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from telemetry.prometheus import exposition as _exposition
from telemetry.prometheus import push as _push
from telemetry.prometheus.catalogue import CATALOGUE, EVENT_KINDS_AT_ZERO, Series
from telemetry.prometheus.classify import MetricTarget, classify_metric
from telemetry.prometheus.registry import AgentMetrics

__all__ = [
    "Series", "CATALOGUE", "EVENT_KINDS_AT_ZERO", "AgentMetrics", "MetricTarget", "classify_metric",
    "exposition", "push", "current", "set_current",
]

# The metrics configure() last attached (old API; the state holder replaces it).
_current: AgentMetrics | None = None


def current() -> AgentMetrics:
    """The metrics the configured Prometheus sink updates (an empty set before ``configure``)."""
    global _current
    if _current is None:
        _current = AgentMetrics()
    return _current


def set_current(metrics: AgentMetrics | None) -> None:
    global _current
    _current = metrics


def _current_registry() -> CollectorRegistry:
    return current().registry


def exposition(accept_header: str | None = None) -> tuple[bytes, str]:
    """``telemetry.prometheus.exposition.render`` of the current registry."""
    return _exposition.render(_current_registry(), accept_header)


def push(url: str, job: str = "elastiscope", grouping_key: dict[str, str] | None = None,
         timeout: float = 5.0) -> None:
    """``telemetry.prometheus.push.push`` of the current registry."""
    _push.push(_current_registry(), url, job=job, grouping_key=grouping_key, timeout=timeout)
