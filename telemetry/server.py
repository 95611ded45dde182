"""The agent's HTTP endpoint: Prometheus scrapes, health probes, a status snapshot and recent events.

The app knows the agent only through a *status provider*, a callable returning the snapshot dict
of ``LocalElasticAgent.status_snapshot()``; it never imports ``agent`` (the one-way rule). Events
come from the pipeline's :class:`~telemetry.sinks.memory.MemorySink`.

Importing this module is cheap: FastAPI, pydantic and uvicorn load only when an app is built or
served. That lets ``elastiscope run`` bind the listening socket first (so a port already in use is
reported before anything starts) and load the web stack later on the server's own thread (see
``EndpointServer``'s ``lazy``). A request that arrives in between waits in the socket's backlog.

Routes (all GET):

``/metrics``        Prometheus text, or OpenMetrics when the Accept header asks for it
``/healthz``        the endpoint is up (liveness)
``/readyz``         200 while the worker group is HEALTHY, 503 otherwise (readiness)
``/status``         run id, role, state, restarts, ranks and every local worker
``/events``         recent events, filtered by ``since``, ``name``, ``state``, ``source``, ``rank``
``/events/stream``  the same as server-sent events, as they happen

With a bearer token configured every route except the two probes requires
``Authorization: Bearer <token>``.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations,
# which name classes imported inside ``create_app``, so they must be evaluated where defined.
import errno
import hmac
import ipaddress
import json
import logging
import math
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from telemetry.pipeline import Sink

if TYPE_CHECKING:  # pragma: no cover
    from telemetry.sinks.memory import MemorySink

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

log = logging.getLogger("elastiscope.endpoint")

StatusProvider = Callable[[], Mapping[str, Any]]
# (Accept header or None) -> (body, content type); telemetry.metrics.exposition has this shape.
MetricsRenderer = Callable[["str | None"], "tuple[bytes, str]"]

# torch's WorkerState values, in its declaration order.
WORKER_STATES = ("UNKNOWN", "INIT", "HEALTHY", "UNHEALTHY", "STOPPED", "SUCCEEDED", "FAILED")

# Server-sent events: an idle stream sends a comment line this often, so proxies and load
# balancers keep the connection open. New events wake the stream at once (no polling).
STREAM_HEARTBEAT_SECONDS = 15.0
MAX_EVENTS_PER_PAGE = 10_000


class EndpointError(ValueError):
    """The endpoint cannot start as configured; the message is one line meant for a person."""


# ---- address policy and the listening socket ------------------------------------------------


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses
    )


def bind_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0 = ephemeral), or EndpointError saying why not."""
    if not 0 <= port <= 65535:
        raise EndpointError(f"metrics port {port} is out of range (0-65535)")
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise EndpointError(f"cannot resolve metrics host {host!r}: {e.strerror}") from None
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        # Lets a restarted agent reuse its port while old connections sit in TIME_WAIT; on
        # Linux it does not allow two listeners on one port, so "in use" is still detected.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise EndpointError(f"metrics port {port} on {host} is already in use") from None
        raise EndpointError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


def _url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


# ---- response models (built on first use so importing this module stays cheap) --------------

_models: dict[str, Any] = {}


def _build_models() -> dict[str, Any]:
    if _models:
        return _models
    from typing import Literal, Optional, Union

    from pydantic import BaseModel, Field

    State = Literal[WORKER_STATES]  # type: ignore[valid-type]
    MetadataValue = Union[str, int, float, bool, None]

    class WorkerStatus(BaseModel):
        """One local worker process."""

        local_rank: int
        global_rank: Optional[int] = Field(None, description="-1 or null before rank assignment")
        role_rank: Optional[int] = None
        pid: Optional[int] = Field(None, description="null while the worker is not running")
        state: State = "UNKNOWN"
        start_time: Optional[float] = Field(None, description="seconds since the epoch")
        exit_code: Optional[int] = Field(None, description="null while the worker runs")
        cpu_seconds: Optional[float] = Field(None, description="user + system CPU time")
        rss_bytes: Optional[int] = Field(None, description="resident memory")

    class Status(BaseModel):
        """The agent and its worker group right now."""

        run_id: Optional[str] = None
        role: Optional[str] = None
        state: State = Field(..., description="the worker group's state")
        restarts_used: int = 0
        remaining_restarts: Optional[int] = None
        max_restarts: Optional[int] = None
        group_rank: Optional[int] = Field(None, description="this node's rank among the agents")
        group_world_size: Optional[int] = Field(None, description="number of agents (nodes)")
        world_size: Optional[int] = Field(None, description="number of workers over all nodes")
        workers: list[WorkerStatus] = Field(default_factory=list)

    class Health(BaseModel):
        status: Literal["ok"] = "ok"
        uptime_seconds: float

    class Readiness(BaseModel):
        ready: bool
        state: State

    class EventRecord(BaseModel):
        """One event in torch's event format, with its position in the ring buffer."""

        seq: int = Field(..., description="increasing sequence number; pass as since= to page")
        name: str
        source: Literal["AGENT", "WORKER"]
        timestamp: int = Field(..., description="milliseconds since the epoch")
        metadata: dict[str, MetadataValue]

    class EventPage(BaseModel):
        events: list[EventRecord]
        last_seq: int = Field(..., description="sequence number of the newest event held")

    class Problem(BaseModel):
        detail: str

    _models.update(
        WorkerStatus=WorkerStatus,
        Status=Status,
        Health=Health,
        Readiness=Readiness,
        EventRecord=EventRecord,
        EventPage=EventPage,
        Problem=Problem,
    )
    return _models


def __getattr__(name: str) -> Any:  # PEP 562: `from telemetry.server import Status` builds lazily
    if name in {"WorkerStatus", "Status", "Health", "Readiness", "EventRecord", "EventPage", "Problem"}:
        return _build_models()[name]
    raise AttributeError(name)


# ---- turning what the providers give us into what the schema promises -----------------------


def _json_scalar(value: Any) -> Any:
    """A metadata value the JSON encoder and the schema accept: scalars, non-finite floats as text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return str(value)


def _state_name(value: Any) -> str:
    name = str(getattr(value, "value", value) or "UNKNOWN").upper()
    return name if name in WORKER_STATES else "UNKNOWN"


def _normalise_status(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: snapshot.get(k) for k in (
        "run_id", "role", "remaining_restarts", "max_restarts",
        "group_rank", "group_world_size", "world_size",
    )}
    out["run_id"] = None if out["run_id"] is None else str(out["run_id"])
    out["state"] = _state_name(snapshot.get("state"))
    out["restarts_used"] = int(snapshot.get("restarts_used") or 0)
    workers = []
    for w in snapshot.get("workers") or ():
        w = dict(w)
        w["state"] = _state_name(w.get("state"))
        workers.append(w)
    out["workers"] = workers
    return out


def _event_record(seq: int, event: Any) -> dict[str, Any]:
    source = getattr(event.source, "value", event.source)
    return {
        "seq": seq,
        "name": str(event.name),
        "source": str(source) if str(source) in ("AGENT", "WORKER") else "AGENT",
        "timestamp": int(event.timestamp or 0),
        "metadata": {str(k): _json_scalar(v) for k, v in (event.metadata or {}).items()},
    }


def _default_metrics(accept: str | None) -> tuple[bytes, str]:
    try:
        from telemetry.metrics import exposition
    except ImportError:  # the catalogue is not there: fall back to the default registry
        from prometheus_client import REGISTRY
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        return encoder(REGISTRY), content_type
    return exposition(accept)


# ---- the app ---------------------------------------------------------------------------------


def create_app(
    status_provider: StatusProvider,
    events: "MemorySink | None" = None,
    *,
    token: str | None = None,
    metrics: MetricsRenderer | None = None,
    on_metrics_scrape: Callable[[], None] | None = None,
    stream_heartbeat_seconds: float = STREAM_HEARTBEAT_SECONDS,
):
    """Build the FastAPI app. ``token`` turns on bearer authentication for all but the probes."""
    import asyncio
    from typing import Literal, Optional

    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from starlette.background import BackgroundTask

    m = _build_models()
    render_metrics = metrics or _default_metrics
    started = time.monotonic()
    from telemetry import __version__

    app = FastAPI(
        title="Elastiscope agent",
        version=__version__,
        description="Metrics, health, status and events of one Elastiscope agent.",
    )

    protected: list[Any] = []
    auth_responses: dict[int | str, dict[str, Any]] = {}
    if token:
        bearer = HTTPBearer(auto_error=False, description="the agent's --token")
        expected = token.encode()

        def check_token(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)):
            given = credentials.credentials.encode() if credentials else b""
            if not hmac.compare_digest(given, expected):
                raise HTTPException(
                    401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
                )

        protected = [Depends(check_token)]
        auth_responses = {401: {"model": m["Problem"], "description": "missing or wrong token"}}

    def snapshot() -> dict[str, Any]:
        try:
            return _normalise_status(status_provider())
        except Exception as e:  # the agent is mid-change or broken; say so, do not crash
            log.debug("status provider failed", exc_info=True)
            raise HTTPException(503, f"status unavailable: {type(e).__name__}") from None

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        dependencies=protected,
        responses={
            200: {
                "description": "Prometheus text format, or OpenMetrics if the Accept header asks",
                "content": {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/openmetrics-text": {"schema": {"type": "string"}},
                },
            },
            **auth_responses,
        },
    )
    def get_metrics(request: Request) -> Response:
        body, content_type = render_metrics(request.headers.get("accept"))
        noted = None
        if on_metrics_scrape is not None:
            # Noted once the body is written, not before: the end-of-job linger stops the
            # server and exits as soon as a scrape is noted, which could cut off that very
            # response. An async task runs on the loop right after the send, no thread hop.
            async def note_scrape() -> None:
                on_metrics_scrape()

            noted = BackgroundTask(note_scrape)
        return Response(body, media_type=content_type, background=noted)

    @app.get("/healthz", summary="Liveness: the endpoint answers", response_model=m["Health"])
    def get_healthz():
        return {"status": "ok", "uptime_seconds": round(time.monotonic() - started, 3)}

    @app.get(
        "/readyz",
        summary="Readiness: the worker group is HEALTHY",
        response_model=m["Readiness"],
        responses={
            503: {"model": m["Readiness"], "description": "workers not (yet, or no longer) healthy"}
        },
    )
    def get_readyz():
        try:
            state = _state_name(status_provider().get("state"))
        except Exception:
            state = "UNKNOWN"
        body = {"ready": state == "HEALTHY", "state": state}
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get(
        "/status",
        summary="The agent, its worker group and every local worker",
        response_model=m["Status"],
        dependencies=protected,
        responses={503: {"model": m["Problem"], "description": "status unavailable"}, **auth_responses},
    )
    def get_status():
        return snapshot()

    def query(since, name, state, source, rank, limit):
        if events is None:
            return [], 0
        head = events.last_seq()
        found = events.query(since=since, name=name, state=state, source=source, rank=rank)
        found = [(s, e) for s, e in found if s <= head]
        if limit is not None:
            found = found[-limit:]
        return found, head

    Since = Query(0, ge=0, description="only events after this sequence number")
    Name = Query(None, description="event name prefix, e.g. elastiscope.worker")
    State = Query(None, description="metadata state, e.g. FAILED")
    Source = Query(None, description="AGENT or WORKER")
    Rank = Query(None, description="metadata global_rank")

    @app.get(
        "/events",
        summary="Recent events, oldest first",
        response_model=m["EventPage"],
        dependencies=protected,
        responses=auth_responses,
    )
    def get_events(
        since: int = Since,
        name: Optional[str] = Name,
        state: Optional[str] = State,
        source: Optional[Literal["AGENT", "WORKER"]] = Source,
        rank: Optional[int] = Rank,
        limit: int = Query(1000, ge=1, le=MAX_EVENTS_PER_PAGE, description="newest N matches"),
    ):
        found, head = query(since, name, state, source, rank, limit)
        return {"events": [_event_record(s, e) for s, e in found], "last_seq": head}

    @app.get(
        "/events/stream",
        summary="Events as server-sent events, as they happen",
        response_class=StreamingResponse,
        dependencies=protected,
        responses={
            200: {
                "description": "one block per event: `id` (seq), `event` (name), `data` (EventRecord JSON)",
                # Before OpenAPI 3.2's itemSchema, `schema` of an event stream describes one event.
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
            },
            **auth_responses,
        },
    )
    async def stream_events(
        request: Request,
        since: Optional[int] = Query(
            None, ge=0, description="start after this sequence number (default: now)"
        ),
        name: Optional[str] = Name,
        state: Optional[str] = State,
        source: Optional[Literal["AGENT", "WORKER"]] = Source,
        rank: Optional[int] = Rank,
    ):
        resume = request.headers.get("last-event-id", "")
        if since is None:
            since = int(resume) if resume.isdigit() else (events.last_seq() if events else 0)

        async def frames():
            last = since
            if events is None:  # nothing will ever arrive: only keep the connection open
                while True:
                    await asyncio.sleep(stream_heartbeat_seconds)
                    yield ": keep-alive\n\n"
            loop = asyncio.get_running_loop()
            arrived = asyncio.Event()

            def on_event() -> None:
                # Runs on the producer's thread. One wake-up per batch: while a wake-up is
                # pending, the events after it are read by the same pass.
                if not arrived.is_set():
                    try:
                        loop.call_soon_threadsafe(arrived.set)
                    except RuntimeError:  # the loop closed under a late event
                        pass

            events.add_listener(on_event)
            try:
                while True:
                    # Cleared before reading: an event published after the read sets it again.
                    arrived.clear()
                    found, head = query(last, name, state, source, rank, None)
                    last = max(last, head)
                    for seq, event in found:
                        data = json.dumps(_event_record(seq, event), separators=(",", ":"))
                        yield f"id: {seq}\nevent: {event.name}\ndata: {data}\n\n"
                    try:
                        await asyncio.wait_for(arrived.wait(), stream_heartbeat_seconds)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
            finally:
                events.remove_listener(on_event)

        return StreamingResponse(
            frames(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


# ---- serving ---------------------------------------------------------------------------------


class _DateHeader:
    """ASGI middleware adding the HTTP ``Date`` header to every response.

    uvicorn keeps its Date header current by waking its event loop ten times a second; an
    agent's endpoint is scraped every few seconds at most, so the date is formatted when a
    response starts instead (at most once per second of wall time), and an idle endpoint's
    thread sleeps until a client comes.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._second = -1
        self._value = b""

    def _now(self) -> bytes:
        from email.utils import formatdate

        now = time.time()
        second = int(now)
        if second != self._second:
            self._value = formatdate(now, usegmt=True).encode()
            self._second = second
        return self._value

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_date(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(b"date", self._now()), *message.get("headers", ())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_date)


_idle_server: Any = None


def _idle_server_class() -> Any:
    """A ``uvicorn.Server`` whose main loop sleeps until it is told to exit.

    uvicorn's ``main_loop`` wakes every 0.1 s to look at ``should_exit`` (and to refresh the
    Date header, see :class:`_DateHeader`): on an idle agent that was a third of its CPU. Here
    setting ``should_exit`` (from any thread) wakes the loop through the event loop's own
    thread-safe call, so stopping stays immediate and nothing polls meanwhile.
    """
    global _idle_server
    if _idle_server is not None:
        return _idle_server
    import asyncio

    import uvicorn

    class IdleServer(uvicorn.Server):
        _loop: Any = None
        _exit_requested: Any = None
        _should_exit = False

        @property  # type: ignore[override]
        def should_exit(self) -> bool:
            return self._should_exit

        @should_exit.setter
        def should_exit(self, value: bool) -> None:
            self._should_exit = value
            # Read after the write: either main_loop sees the flag when it starts waiting, or
            # we see its loop and event here and wake it.
            loop, requested = self._loop, self._exit_requested
            if value and loop is not None and requested is not None:
                try:
                    loop.call_soon_threadsafe(requested.set)
                except RuntimeError:  # the loop is already closed: nothing left to wake
                    pass

        async def main_loop(self) -> None:
            # One tick sets uvicorn's default headers (and honours anything else on_tick does
            # at start); after that only an exit request wakes this coroutine.
            if await self.on_tick(0):
                return
            self._exit_requested = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            if self._should_exit:
                return
            await self._exit_requested.wait()

    _idle_server = IdleServer
    return IdleServer


class EndpointServer:
    """uvicorn on a pre-bound socket, in a daemon thread.

    The socket listens from the moment it is bound, so a client can always connect. With
    ``lazy`` the thread waits (in ``select``, costing nothing) before it loads the web stack and
    the app: until a client connects, or until ``warm_up`` asks for it, whichever comes first.
    A connection made meanwhile waits in the backlog and is answered once the app is up (about
    a second). That keeps FastAPI, pydantic and uvicorn off a job's start-up path entirely; the
    agent warms the endpoint up once its workers are running and it has nothing else to do.
    ``stop`` is safe at any point, even before the app exists.
    """

    def __init__(self, sock: socket.socket, app_factory: Callable[[], Any], lazy: bool = False) -> None:
        self.sock = sock
        self.url = _url_of(sock)
        self.host, self.port = sock.getsockname()[:2]
        self._app_factory = app_factory
        self._server: Any = None
        self._lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._load_at: float | None = None if lazy else 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self.error: BaseException | None = None
        self.last_scrape: float | None = None  # monotonic time of the latest /metrics answer
        self._scraped = threading.Condition()

    def note_scrape(self) -> None:
        with self._scraped:
            self.last_scrape = time.monotonic()
            self._scraped.notify_all()

    def wait_for_scrape(self, after: float, timeout: float) -> bool:
        """Block until /metrics is answered later than monotonic time ``after``, or ``timeout``.

        The end-of-job linger uses it: once a scraper has seen the final state, stop waiting.
        """
        deadline = time.monotonic() + timeout
        with self._scraped:
            while self.last_scrape is None or self.last_scrape <= after:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._scraped.wait(remaining)
            return True

    def warm_up(self, delay: float = 0.0) -> None:
        """Load the app ``delay`` seconds from now (an earlier request wins) if not loaded yet."""
        at = time.monotonic() + max(0.0, delay)
        with self._lock:
            if self._load_at is not None and self._load_at <= at:
                return
            self._load_at = at
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def start(self) -> "EndpointServer":
        self._thread = threading.Thread(target=self._serve, name="elastiscope-endpoint", daemon=True)
        self._thread.start()
        return self

    def _wait_until_needed(self) -> bool:
        """False if stopped first; True once a client is waiting or the load time has come."""
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                with self._lock:
                    if self._stopping:
                        return False
                    load_at = self._load_at
                timeout = None if load_at is None else max(0.0, load_at - time.monotonic())
                if timeout == 0.0:
                    return True
                for key, _ in selector.select(timeout):
                    if key.fileobj is self.sock:
                        return True
                    try:
                        self._wake_r.recv(64)
                    except OSError:
                        pass

    def _serve(self) -> None:
        try:
            if not self._wait_until_needed():
                return
            import uvicorn

            app = self._app_factory()
            config = uvicorn.Config(
                _DateHeader(app),
                log_config=None,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=1,
                server_header=False,
                # uvicorn refreshes its Date header from a tick; ours is stamped per response.
                date_header=False,
            )
            server = _idle_server_class()(config)
            with self._lock:
                if self._stopping:
                    return
                self._server = server
            server.run(sockets=[self.sock])
        except BaseException as e:  # never take the job down: report, and stay down
            self.error = e
            log.warning("metrics endpoint stopped: %s: %s", type(e).__name__, e)
        finally:
            for s in (self.sock, self._wake_r, self._wake_w):
                try:
                    s.close()
                except OSError:
                    pass

    @property
    def loaded(self) -> bool:
        """The app exists (or is being built): requests are, or will shortly be, answered."""
        return self._server is not None

    @property
    def serving(self) -> bool:
        server = self._server
        return bool(server is not None and server.started)

    def wait_serving(self, timeout: float) -> bool:
        """Block until uvicorn accepts requests (or gave up); tests and benchmarks use this."""
        deadline = time.monotonic() + timeout
        while not self.serving:
            if self.error is not None or (self._thread and not self._thread.is_alive()):
                return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving; wait up to ``timeout`` seconds for the thread (0: do not wait)."""
        with self._lock:
            self._stopping = True
            server = self._server
        self._wake()
        if server is not None:
            server.should_exit = True
            # Open event streams would otherwise hold the graceful shutdown for its full timeout.
            server.force_exit = True
        if self._thread is not None and timeout > 0:
            self._thread.join(timeout)


class WarmUpWhenHealthy(Sink):
    """A pipeline sink that warms a lazy endpoint up once the worker group turns HEALTHY.

    By then the agent is only watching its workers, so loading the web stack takes nothing
    from the job's start-up; ``delay`` leaves the workers' own start-up alone too.
    """

    name = "endpoint_warm_up"
    synchronous = True
    events = True
    metrics = False

    def __init__(self, server: EndpointServer, delay: float = 1.0) -> None:
        self._server = server
        self._delay = delay

    def wants(self, record: object) -> bool:
        return getattr(record, "name", None) == "elastiscope.agent.state_change"

    def emit(self, record: Any) -> None:
        if record.metadata.get("state") == "HEALTHY":
            self._server.warm_up(self._delay)


def check_exposure(host: str, token: str | None, token_required: bool = True) -> None:
    """EndpointError unless ``host`` is loopback, a token is set, or the token is waived."""
    if not token and token_required and not is_loopback(host):
        raise EndpointError(
            f"--metrics-host {host} is not a loopback address: set --token "
            "(or ELASTISCOPE_TOKEN), or pass --no-token-required to expose it without one"
        )


def serve_app(
    sock: socket.socket,
    status_provider: StatusProvider,
    events: "MemorySink | None" = None,
    *,
    token: str | None = None,
    metrics: MetricsRenderer | None = None,
    lazy: bool = False,
) -> EndpointServer:
    """Serve the endpoint app on an already bound socket, from a daemon thread (see ``lazy``
    on :class:`EndpointServer`)."""
    holder: list[EndpointServer] = []

    def build():
        return create_app(
            status_provider,
            events,
            token=token,
            metrics=metrics,
            on_metrics_scrape=lambda: holder[0].note_scrape(),
        )

    server = EndpointServer(sock, build, lazy=lazy)
    holder.append(server)
    return server.start()


def start_endpoint(
    status_provider: StatusProvider,
    events: "MemorySink | None" = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    token_required: bool = True,
    metrics: MetricsRenderer | None = None,
) -> EndpointServer:
    """Check the address policy and bind now (errors surface here), then serve from a thread.

    A non-loopback ``host`` needs a ``token`` unless ``token_required`` is False.
    """
    check_exposure(host, token, token_required)
    sock = bind_socket(host, port)
    return serve_app(sock, status_provider, events, token=token, metrics=metrics)
