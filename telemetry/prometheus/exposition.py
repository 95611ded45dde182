"""Rendering a registry for a scrape: the body and content type of a /metrics response."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["render"]


def render(registry: CollectorRegistry, accept_header: str | None = None) -> tuple[bytes, str]:
    """``registry`` as OpenMetrics if ``accept_header`` asks for it, else Prometheus text.

    Returns (body, content type) for an HTTP response.
    """
    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(registry), content_type
