"""The agent's HTTP endpoint: Prometheus scrapes, health probes, a status snapshot and recent events.

Routes (all GET):

``/metrics``        Prometheus text, or OpenMetrics when the Accept header asks for it
``/healthz``        the endpoint is up (liveness)
``/readyz``         200 while the worker group is HEALTHY, 503 otherwise (readiness)
``/status``         run id, role, state, restarts, ranks and every local worker
``/events``         recent events, filtered by ``since``, ``name``, ``state``, ``source``, ``rank``
``/events/stream``  the same as server-sent events, as they happen
``/stacks``         every local worker's Python stack, read now without stopping the job
``/``               the live page (``/page.css``, ``/page.js``); ``/docs``, ``/redoc``: why
                    interactive docs are off

With a bearer token configured every route except the two probes and the page's files requires
``Authorization: Bearer <token>``.

The modules, each with one job:

``binding``      where the endpoint may listen (loopback or a token) and its listening socket
``serving``      ``EndpointServer``: uvicorn on that socket in a daemon thread, loaded lazily
``app``          ``create_app``: the FastAPI app assembled from the route groups
``routes``       the route groups: metrics, probes, status, events (+ stream)
``stream``       server-sent events, woken by new events
``auth``         bearer-token check for protected routes
``models``       the response models (the OpenAPI schema)
``payloads``     provider output turned into what the models promise
``page_routes``  the live page's files and the ``/docs`` notice
``middleware``   the per-response ``Date`` header
``idle_server``  a uvicorn server that sleeps until told to stop

Importing this package is cheap: FastAPI, pydantic and uvicorn load only when an app is built
or served. The response models (``Status``, ``EventPage``, ...) are importable from here; the
first such import loads pydantic.
"""

from __future__ import annotations

from typing import Any

from telemetry.endpoint.app import STREAM_HEARTBEAT_SECONDS, create_app
from telemetry.endpoint.binding import EndpointError, bind_socket, check_exposure, is_loopback
from telemetry.endpoint.payloads import MetricsRenderer, StatusProvider
from telemetry.endpoint.serving import EndpointServer, serve_app, start_endpoint

__all__ = [
    "StatusProvider",
    "MetricsRenderer",
    "EndpointError",
    "STREAM_HEARTBEAT_SECONDS",
    "is_loopback",
    "bind_socket",
    "check_exposure",
    "create_app",
    "EndpointServer",
    "serve_app",
    "start_endpoint",
]

# Names of telemetry.endpoint.models, handed out on first use (PEP 562) so that importing the
# package does not import pydantic.
MODEL_NAMES = frozenset(
    ("WorkerStatus", "Status", "Health", "Readiness", "EventRecord", "EventPage", "Problem",
     "RankStack", "StackDump", "Peer")
)


def __getattr__(name: str) -> Any:
    if name in MODEL_NAMES:
        from telemetry.endpoint import models  # pydantic: only when a model is asked for

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
