"""Pushing a registry to a Prometheus pushgateway, for jobs too short to be scraped."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, push_to_gateway

__all__ = ["push"]


def push(registry: CollectorRegistry, url: str, job: str = "elastiscope",
         grouping_key: dict[str, str] | None = None, timeout: float = 5.0) -> None:
    """Replace the group (``job`` + ``grouping_key``) on the pushgateway at ``url`` with
    ``registry``'s series. Raises on failure."""
    push_to_gateway(url, job=job, registry=registry, grouping_key=grouping_key or {}, timeout=timeout)
