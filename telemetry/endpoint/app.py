"""``create_app``: the endpoint's FastAPI app, assembled from its route groups.

The app knows the agent only through a *status provider* (see ``payloads.StatusProvider``); it
never imports ``agent`` (the one-way rule). Events come from the event ring handed in, a
:class:`~telemetry.sinks.memory.MemorySink`.

Importing this module is cheap: FastAPI and pydantic load when an app is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from telemetry import config
from telemetry.endpoint.payloads import MetricsRenderer, StacksProvider, StatusProvider
from telemetry.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from telemetry.sinks.memory import MemorySink

__all__ = ["STREAM_HEARTBEAT_SECONDS", "create_app"]

# Server-sent events: an idle stream sends a comment line this often, so proxies and load
# balancers keep the connection open. New events wake the stream at once (no polling).
STREAM_HEARTBEAT_SECONDS = 15.0


def create_app(
    status_provider: StatusProvider,
    events: MemorySink | None = None,
    *,
    token: str | None = None,
    metrics: MetricsRenderer | None = None,
    on_metrics_scrape: Callable[[], None] | None = None,
    stream_heartbeat_seconds: float = STREAM_HEARTBEAT_SECONDS,
    stacks: StacksProvider | None = None,
) -> FastAPI:
    """Build the FastAPI app. ``token`` turns on bearer authentication for all but the probes.

    ``events`` is the event ring /events and /events/stream read (None: no events);
    ``metrics`` renders /metrics (default: ``telemetry.config.render_metrics``, the registry of
    the Prometheus sink attached to the pipeline); ``on_metrics_scrape`` is called after each
    /metrics response has been sent; ``stacks`` reads every worker's stack for /stacks
    (None: no /stacks route).
    """
    # The web stack, loaded here and not at import (see the module docstring).
    from fastapi import FastAPI

    from telemetry.endpoint import page_routes, routes
    from telemetry.endpoint.auth import protection

    app = FastAPI(
        title="Elastiscope agent",
        version=__version__,
        description="Metrics, health, status and events of one Elastiscope agent.",
        # FastAPI's /docs and /redoc load their scripts from a CDN; ours say why they are off.
        docs_url=None,
        redoc_url=None,
    )
    protected = protection(token)
    routes.add_metrics_route(app, metrics or config.render_metrics, on_metrics_scrape, protected)
    routes.add_probe_routes(app, status_provider)
    routes.add_status_route(app, status_provider, protected)
    routes.add_event_routes(app, events, protected, stream_heartbeat_seconds)
    if stacks is not None:
        routes.add_stacks_route(app, stacks, protected)
    page_routes.add_page_routes(app)
    page_routes.add_docs_notice(app)
    return app
