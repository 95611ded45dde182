"""Serving the endpoint: uvicorn on a pre-bound socket, in a daemon thread.

Importing this module is cheap. That lets ``elastiscope run`` bind the listening socket first
(so a port already in use is reported before anything starts) and load the web stack later on
the server's own thread (see ``EndpointServer``'s ``lazy``). A request that arrives in between
waits in the socket's backlog.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from telemetry.endpoint.app import create_app
from telemetry.endpoint.binding import bind_socket, check_exposure, url_of
from telemetry.endpoint.payloads import MetricsRenderer, StacksProvider, StatusProvider

if TYPE_CHECKING:  # pragma: no cover
    from telemetry.sinks.memory import MemorySink

__all__ = ["EndpointServer", "serve_app", "start_endpoint"]

log = logging.getLogger("elastiscope.endpoint")


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
        self.url = url_of(sock)
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

    @property
    def scraped(self) -> bool:
        """Whether /metrics has been answered at least once: a scraper is watching."""
        return self.last_scrape is not None

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
        except OSError:  # already closed: the thread has ended, nobody to wake
            pass

    def start(self) -> "EndpointServer":
        self._thread = threading.Thread(target=self._serve, name="elastiscope-endpoint", daemon=True)
        self._thread.start()
        return self

    def _wait_until_needed(self) -> bool:
        """False if stopped first; True once a client is waiting or the load time has come."""
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

    def _build_server(self) -> Any:
        """The app and the uvicorn server for it: the moment the web stack loads."""
        import uvicorn

        from telemetry.endpoint.idle_server import IdleServer
        from telemetry.endpoint.middleware import DateHeader

        config = uvicorn.Config(
            DateHeader(self._app_factory()),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            server_header=False,
            # uvicorn refreshes its Date header from a tick; ours is stamped per response.
            date_header=False,
        )
        return IdleServer(config)

    def _serve(self) -> None:
        try:
            if not self._wait_until_needed():
                return
            server = self._build_server()
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

    @property
    def alive(self) -> bool:
        """The server's thread runs (waiting for a client, loading, or serving)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def event_loop(self) -> Any:
        """The asyncio loop requests are served on, once serving (None before)."""
        server = self._server
        return None if server is None else server.loop

    def wait_serving(self, timeout: float) -> bool:
        """Block until uvicorn accepts requests (or gave up); tests and benchmarks use this."""
        deadline = time.monotonic() + timeout
        while not self.serving:
            if self.error is not None or (self._thread is not None and not self.alive):
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


def serve_app(
    sock: socket.socket,
    status_provider: StatusProvider,
    events: MemorySink | None = None,
    *,
    token: str | None = None,
    metrics: MetricsRenderer | None = None,
    lazy: bool = False,
    stacks: StacksProvider | None = None,
) -> EndpointServer:
    """Serve the endpoint app on an already bound socket, from a daemon thread (see ``lazy``
    on :class:`EndpointServer`). ``events`` is the event ring the app reads."""

    def build() -> Any:
        # The server notes each scrape for the end-of-job linger. ``server`` is looked up when
        # the app is built (on the server's thread, after start()), so it exists by then.
        return create_app(
            status_provider,
            events,
            token=token,
            metrics=metrics,
            on_metrics_scrape=server.note_scrape,
            stacks=stacks,
        )

    server = EndpointServer(sock, build, lazy=lazy)
    return server.start()


def start_endpoint(
    status_provider: StatusProvider,
    events: MemorySink | None = None,
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
