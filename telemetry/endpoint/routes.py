"""The endpoint's routes, one function per group: metrics, probes, status, events.

Imports FastAPI, so only the app builder imports it. Each ``add_*`` function adds its group's
GET routes to an app; what a protected route needs comes in as an ``auth.Protection``.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the route functions' annotations.
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from telemetry.endpoint.auth import Protection
from telemetry.endpoint.models import EventPage, Health, Problem, Readiness, Source, StackDump, Status
from telemetry.endpoint.payloads import (
    MetricsRenderer,
    StacksProvider,
    StatusProvider,
    event_record,
    normalise_status,
    state_name,
)
from telemetry.endpoint.stream import event_frames, keep_alive_frames
from telemetry.names import HEALTHY

if TYPE_CHECKING:  # pragma: no cover
    from telemetry.sinks.memory import MemorySink

__all__ = [
    "MAX_EVENTS_PER_PAGE",
    "EventQuery",
    "add_metrics_route",
    "add_probe_routes",
    "add_status_route",
    "add_event_routes",
    "add_event_page_route",
    "add_event_stream_route",
    "add_stacks_route",
]

log = logging.getLogger("elastiscope.endpoint")

MAX_EVENTS_PER_PAGE = 10_000

_METRICS_RESPONSE = {
    "description": "Prometheus text format, or OpenMetrics if the Accept header asks",
    "content": {
        "text/plain": {"schema": {"type": "string"}},
        "application/openmetrics-text": {"schema": {"type": "string"}},
    },
}

# Before OpenAPI 3.2's itemSchema, the `schema` of an event stream describes one event.
_STREAM_RESPONSE = {
    "description": "one block per event: `id` (seq), `event` (name), `data` (EventRecord JSON)",
    "content": {"text/event-stream": {"schema": {
        "type": "object",
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "event": {"type": "string"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": "#/components/schemas/EventRecord"},
            },
        },
    }}},
}


def add_metrics_route(
    app: FastAPI,
    render_metrics: MetricsRenderer,
    on_scrape: Optional[Callable[[], None]],
    protection: Protection,
) -> None:
    """``/metrics``: what ``render_metrics`` gives for the request's Accept header."""

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        dependencies=protection.dependencies,
        responses={200: _METRICS_RESPONSE, **protection.responses},
    )
    def get_metrics(request: Request) -> Response:
        body, content_type = render_metrics(request.headers.get("accept"))
        noted = None
        if on_scrape is not None:
            # Noted once the body is written, not before: the end-of-job linger stops the
            # server and exits as soon as a scrape is noted, which could cut off that very
            # response. An async task runs on the loop right after the send, no thread hop.
            async def note_scrape() -> None:
                on_scrape()

            noted = BackgroundTask(note_scrape)
        return Response(body, media_type=content_type, background=noted)


def add_probe_routes(app: FastAPI, status_provider: StatusProvider) -> None:
    """``/healthz`` and ``/readyz``: open to all, so orchestrators need no token."""
    started = time.monotonic()

    @app.get("/healthz", summary="Liveness: the endpoint answers", response_model=Health)
    def get_healthz():
        return {"status": "ok", "uptime_seconds": round(time.monotonic() - started, 3)}

    @app.get(
        "/readyz",
        summary="Readiness: the worker group is HEALTHY",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "workers not (yet, or no longer) healthy"}},
    )
    def get_readyz():
        try:
            state = state_name(status_provider().get("state"))
        except Exception:  # a provider that fails cannot vouch for the workers: not ready
            state = "UNKNOWN"
        body = {"ready": state == HEALTHY, "state": state}
        return JSONResponse(body, status_code=200 if body["ready"] else 503)


def add_status_route(app: FastAPI, status_provider: StatusProvider, protection: Protection) -> None:
    """``/status``: the provider's snapshot, or 503 while it cannot give one."""

    @app.get(
        "/status",
        summary="The agent, its worker group and every local worker",
        response_model=Status,
        dependencies=protection.dependencies,
        responses={503: {"model": Problem, "description": "status unavailable"}, **protection.responses},
    )
    def get_status():
        try:
            return normalise_status(status_provider())
        except Exception as e:  # the agent is mid-change or broken; say so, do not crash
            log.debug("status provider failed", exc_info=True)
            raise HTTPException(503, f"status unavailable: {type(e).__name__}") from None


def add_stacks_route(app: FastAPI, stacks_provider: StacksProvider, protection: Protection) -> None:
    """``/stacks``: every local worker's Python stack now (a bounded capture, nobody stopped),
    or 503 while there are no workers to read."""

    @app.get(
        "/stacks",
        summary="Every local worker's Python stack, read now without stopping the job",
        response_model=StackDump,
        dependencies=protection.dependencies,
        responses={503: {"model": Problem, "description": "stacks unavailable"}, **protection.responses},
    )
    def get_stacks():
        try:
            return stacks_provider()
        except Exception as e:  # no workers yet, or mid-restart
            log.debug("stacks provider failed", exc_info=True)
            raise HTTPException(503, f"stacks unavailable: {type(e).__name__}") from None


@dataclass(frozen=True)
class EventQuery:
    """The filters of ``/events`` and ``/events/stream``; ``limit`` keeps the newest matches."""

    name: Optional[str] = None
    state: Optional[str] = None
    source: Optional[str] = None
    rank: Optional[int] = None
    limit: Optional[int] = None

    def run(self, ring: Optional["MemorySink"], since: int) -> "tuple[list[tuple[int, Any]], int]":
        """(matching (seq, event) pairs after ``since``, the newest seq held)."""
        if ring is None:
            return [], 0
        # Read the head first: an event arriving during the query is left for the next read,
        # so a stream that resumes after ``head`` neither skips nor repeats it.
        head = ring.last_seq()
        found = ring.query(since=since, name=self.name, state=self.state, source=self.source,
                           rank=self.rank)
        found = [(seq, event) for seq, event in found if seq <= head]
        if self.limit is not None:
            found = found[-self.limit:]
        return found, head


def _filter_params() -> "tuple[Any, Any, Any, Any]":
    """The name, state, source and rank query parameters both event routes take.

    Made per route: FastAPI keeps these parameter objects with the route that uses them.
    """
    return (
        Query(None, description="event name prefix, e.g. elastiscope.worker"),
        Query(None, description="metadata state, e.g. FAILED"),
        Query(None, description="AGENT or WORKER"),
        Query(None, description="metadata global_rank"),
    )


def add_event_routes(
    app: FastAPI,
    ring: Optional["MemorySink"],
    protection: Protection,
    heartbeat_seconds: float,
) -> None:
    """``/events`` (a page) and ``/events/stream`` (server-sent events) from the event ring."""
    add_event_page_route(app, ring, protection)
    add_event_stream_route(app, ring, protection, heartbeat_seconds)


def add_event_page_route(app: FastAPI, ring: Optional["MemorySink"], protection: Protection) -> None:
    """``/events``: the newest ``limit`` matching events after ``since``, oldest first."""
    by_name, by_state, by_source, by_rank = _filter_params()

    @app.get(
        "/events",
        summary="Recent events, oldest first",
        response_model=EventPage,
        dependencies=protection.dependencies,
        responses=protection.responses,
    )
    def get_events(
        since: int = Query(0, ge=0, description="only events after this sequence number"),
        name: Optional[str] = by_name,
        state: Optional[str] = by_state,
        source: Optional[Source] = by_source,
        rank: Optional[int] = by_rank,
        limit: int = Query(1000, ge=1, le=MAX_EVENTS_PER_PAGE, description="newest N matches"),
    ):
        found, head = EventQuery(name, state, source, rank, limit).run(ring, since)
        return {"events": [event_record(seq, event) for seq, event in found], "last_seq": head}


def add_event_stream_route(
    app: FastAPI, ring: Optional["MemorySink"], protection: Protection, heartbeat_seconds: float
) -> None:
    """``/events/stream``: matching events as server-sent events, from ``since`` (or the
    client's ``Last-Event-ID``, or now) for as long as the client stays."""
    by_name, by_state, by_source, by_rank = _filter_params()

    @app.get(
        "/events/stream",
        summary="Events as server-sent events, as they happen",
        response_class=StreamingResponse,
        dependencies=protection.dependencies,
        responses={200: _STREAM_RESPONSE, **protection.responses},
    )
    async def stream_events(
        request: Request,
        since: Optional[int] = Query(
            None, ge=0, description="start after this sequence number (default: now)"
        ),
        name: Optional[str] = by_name,
        state: Optional[str] = by_state,
        source: Optional[Source] = by_source,
        rank: Optional[int] = by_rank,
    ):
        if ring is None:
            frames = keep_alive_frames(heartbeat_seconds)
        else:
            if since is None:  # a reconnecting client resumes after the last id it saw
                resume = request.headers.get("last-event-id", "")
                since = int(resume) if resume.isdigit() else ring.last_seq()
            query = EventQuery(name, state, source, rank)
            frames = event_frames(ring, since, query, heartbeat_seconds)
        return StreamingResponse(
            frames,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
