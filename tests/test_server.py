"""The agent's HTTP endpoint (telemetry/endpoint/): routes, schema, auth and serving.

Route behaviour is checked over real HTTP against uvicorn on 127.0.0.1; the schema fuzzing
(schemathesis) runs in-process against the ASGI app, where it is fast and bounded.
"""

import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import jsonschema
import pytest

import telemetry
from helpers.polling import wait_until
from telemetry.events import Event, EventSource
from telemetry.endpoint import (
    EndpointError,
    bind_socket,
    create_app,
    is_loopback,
    serve_app,
    start_endpoint,
)
from telemetry.names import STATE_CHANGE, WORKER_FAILED
from telemetry.sinks.endpoint_warm_up import WarmUpWhenHealthy
from telemetry.sinks.memory import MemorySink

pytestmark = pytest.mark.timeout(60)


def healthy_status():
    return {
        "run_id": "run-1",
        "role": "trainer",
        "state": "HEALTHY",
        "restarts_used": 1,
        "remaining_restarts": 2,
        "max_restarts": 3,
        "group_rank": 0,
        "group_world_size": 1,
        "world_size": 2,
        "workers": [
            {"local_rank": r, "global_rank": r, "role_rank": r, "pid": 1000 + r, "state": "HEALTHY",
             "start_time": 1.7e9, "exit_code": None, "cpu_seconds": 0.5, "rss_bytes": 1 << 20}
            for r in range(2)
        ],
    }


def failed_event(rank, ts=1000):
    return Event(WORKER_FAILED, EventSource.WORKER, ts,
                 {"state": "FAILED", "global_rank": rank, "exit_code": 1})


def agent_event(name=STATE_CHANGE, state="HEALTHY", ts=1000):
    return Event(name, EventSource.AGENT, ts, {"state": state, "global_rank": None})


@pytest.fixture
def sink():
    return MemorySink()


@pytest.fixture
def serve(sink):
    """Start a real endpoint; yields a factory so each test picks its provider and token."""
    started = []

    def _serve(provider=healthy_status, **kwargs):
        server = start_endpoint(provider, sink, host="127.0.0.1", port=0, **kwargs)
        started.append(server)
        assert server.wait_serving(20), server.error
        return server

    yield _serve
    for server in started:
        server.stop(timeout=5)


def openapi_validator(openapi, schema_name):
    """A jsonschema validator for one component of the app's OpenAPI document."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": openapi["components"]}
    return jsonschema.Draft202012Validator(schema)


# ---- /status, /healthz, /readyz ---------------------------------------------------------------


def test_status_response_validates_against_openapi_schema(serve):
    server = serve()
    with httpx.Client(base_url=server.url) as client:
        openapi = client.get("/openapi.json").json()
        status = client.get("/status").json()
    openapi_validator(openapi, "Status").validate(status)
    assert status["run_id"] == "run-1"
    assert [w["pid"] for w in status["workers"]] == [1000, 1001]


def test_status_is_503_when_the_provider_fails(serve):
    def broken():
        raise RuntimeError("mid-restart")

    server = serve(broken)
    response = httpx.get(server.url + "/status")
    assert response.status_code == 503
    assert "RuntimeError" in response.json()["detail"]


def test_unknown_states_are_reported_as_unknown_not_as_errors(serve):
    server = serve(lambda: {"state": "WEIRD", "workers": [{"local_rank": 0, "state": 7}]})
    body = httpx.get(server.url + "/status").json()
    assert body["state"] == "UNKNOWN" and body["workers"][0]["state"] == "UNKNOWN"


def test_healthz_answers_ok(serve):
    assert httpx.get(serve().url + "/healthz").json()["status"] == "ok"


def test_readyz_is_200_only_while_workers_are_healthy(serve):
    state = {"state": "INIT", "workers": []}
    server = serve(lambda: state)
    first = httpx.get(server.url + "/readyz")
    state["state"] = "HEALTHY"
    second = httpx.get(server.url + "/readyz")
    assert (first.status_code, first.json()) == (503, {"ready": False, "state": "INIT"})
    assert (second.status_code, second.json()) == (200, {"ready": True, "state": "HEALTHY"})


# ---- /metrics ---------------------------------------------------------------------------------


def test_metrics_default_to_prometheus_text(serve):
    response = httpx.get(serve().url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in response.text


def test_metrics_are_openmetrics_when_accept_asks(serve):
    response = httpx.get(serve().url + "/metrics",
                         headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_metrics_serve_the_registry_of_the_prometheus_sink_attached_to_the_pipeline(serve):
    from telemetry.sinks.prometheus import PrometheusSink

    # Not the one configure() builds: a sink handed in, whose registry /metrics must still show.
    telemetry.configure(prometheus=False, log_format="json", extra_sinks=[PrometheusSink()],
                        env={}, exit_handlers=False)
    telemetry.emit(Event(WORKER_FAILED, EventSource.AGENT, 1,
                         {"role": "trainer", "local_rank": 1, "exit_code": 3, "signal": None}))
    body = httpx.get(serve().url + "/metrics").text
    assert ('elastiscope_worker_failures_total{exit_code="3",local_rank="1",role="trainer",'
            'signal=""} 1.0') in body.splitlines()


def test_metrics_scrape_is_noted_for_the_end_of_job_linger(serve):
    server = serve()
    assert server.last_scrape is None
    httpx.get(server.url + "/metrics")
    # Noted once the answer has gone out (a background task): soon after the client has it.
    wait_until(lambda: server.last_scrape is not None, 30, "the scrape to be noted")


# ---- /events and /events/stream ---------------------------------------------------------------


def test_events_filter_by_state_source_and_rank(serve, sink):
    for r in range(3):
        sink.emit(failed_event(r))
    sink.emit(agent_event())
    server = serve()
    body = httpx.get(server.url + "/events",
                     params={"state": "FAILED", "source": "WORKER", "rank": 1}).json()
    assert [(e["name"], e["metadata"]["global_rank"]) for e in body["events"]] == [
        (WORKER_FAILED, 1)
    ]
    assert body["last_seq"] == 4


def test_events_since_returns_only_newer_events(serve, sink):
    for r in range(3):
        sink.emit(failed_event(r))
    body = httpx.get(serve().url + "/events", params={"since": 2}).json()
    assert [e["seq"] for e in body["events"]] == [3]


def test_events_limit_keeps_the_newest(serve, sink):
    for r in range(5):
        sink.emit(failed_event(r))
    body = httpx.get(serve().url + "/events", params={"limit": 2}).json()
    assert [e["metadata"]["global_rank"] for e in body["events"]] == [3, 4]


def test_events_reject_a_bad_source_with_422(serve):
    assert httpx.get(serve().url + "/events", params={"source": "NOBODY"}).status_code == 422


def test_event_metadata_with_non_finite_floats_is_still_valid_json(serve, sink):
    sink.emit(Event("x", EventSource.AGENT, 1, {"duration": float("nan")}))
    body = httpx.get(serve().url + "/events").json()
    assert body["events"][0]["metadata"]["duration"] == "nan"


def _first_streamed_event(server, received: list, connected: threading.Event) -> threading.Thread:
    """A thread reading /events/stream until its first event, which it appends to ``received``."""

    def read():
        with httpx.stream("GET", server.url + "/events/stream", timeout=10) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            connected.set()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    received.append(json.loads(line[6:]))
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def test_event_stream_delivers_events_published_after_connecting(serve, sink):
    sink.emit(failed_event(0))  # before connecting: not replayed without since=
    server = serve()
    received = []
    connected = threading.Event()
    reader = _first_streamed_event(server, received, connected)
    assert connected.wait(10)
    sink.emit(failed_event(7))
    reader.join(10)
    assert [(e["seq"], e["metadata"]["global_rank"]) for e in received] == [(2, 7)]


def test_event_stream_resumes_from_last_event_id(serve, sink):
    for r in range(3):
        sink.emit(failed_event(r))
    server = serve()
    with httpx.stream("GET", server.url + "/events/stream", headers={"Last-Event-ID": "1"},
                      timeout=10) as response:
        ids = []
        for line in response.iter_lines():
            if line.startswith("id: "):
                ids.append(int(line[4:]))
                if len(ids) == 2:
                    break
    assert ids == [2, 3]


def test_event_stream_listens_for_new_events_only_while_a_client_is_connected(serve, sink):
    server = serve()
    assert sink.listener_count() == 0
    received = []
    reader = _first_streamed_event(server, received, threading.Event())
    # The stream waits on the sink (no polling): it is woken by the event itself.
    wait_until(lambda: sink.listener_count() == 1, 10, "the stream to listen on the sink")
    sink.emit(failed_event(3))
    reader.join(10)
    assert [e["metadata"]["global_rank"] for e in received] == [3]
    wait_until(lambda: sink.listener_count() == 0, 10, "the closed stream to stop listening")


# ---- authentication ---------------------------------------------------------------------------


def test_token_protects_status_and_metrics(serve):
    server = serve(token="s3cret")
    assert httpx.get(server.url + "/status").status_code == 401
    assert httpx.get(server.url + "/metrics",
                     headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.get(server.url + "/status", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_token_leaves_health_probes_open(serve):
    server = serve(token="s3cret")
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_non_loopback_address_requires_a_token():
    with pytest.raises(EndpointError, match="--token"):
        start_endpoint(healthy_status, host="0.0.0.0", port=0)


def test_non_loopback_address_without_token_when_explicitly_allowed():
    server = start_endpoint(healthy_status, host="0.0.0.0", port=0, token_required=False)
    try:
        assert server.wait_serving(20)
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").status_code == 200
    finally:
        server.stop(timeout=5)


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")


# ---- binding and serving ----------------------------------------------------------------------


def test_port_in_use_is_an_endpoint_error():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        with pytest.raises(EndpointError, match="already in use"):
            bind_socket("127.0.0.1", holder.getsockname()[1])
    finally:
        holder.close()


def test_stop_ends_the_server_thread_even_with_an_open_event_stream(serve):
    server = serve()
    opened = threading.Event()

    def hold_stream():
        try:
            with httpx.stream("GET", server.url + "/events/stream", timeout=30) as r:
                opened.set()
                for _ in r.iter_lines():
                    pass
        except httpx.HTTPError:
            pass

    threading.Thread(target=hold_stream, daemon=True).start()
    assert opened.wait(10)
    started = time.monotonic()
    server.stop(timeout=10)
    assert not server.alive
    assert time.monotonic() - started < 5


def test_idle_endpoint_keeps_no_timer_in_its_event_loop(serve):
    """Nothing wakes an idle endpoint's thread (uvicorn's own main loop ticks ten times a
    second): once the last connection is gone, its event loop has no live timer."""
    server = serve()
    assert httpx.get(server.url + "/healthz").status_code == 200
    loop = server.event_loop

    def live_timers():
        # asyncio offers no public view of its timers; its heap of scheduled handles is it.
        return [h for h in list(loop._scheduled) if not h.cancelled()]

    wait_until(lambda: not live_timers(), 10, lambda: f"no live timers, not {live_timers()}")


def test_responses_carry_the_current_date(serve):
    from email.utils import parsedate_to_datetime

    response = httpx.get(serve().url + "/healthz")
    date = parsedate_to_datetime(response.headers["date"]).timestamp()
    assert abs(date - time.time()) < 60
    assert response.headers.get_list("date") == [response.headers["date"]]


def test_stop_ends_an_idle_server_thread_promptly(serve):
    server = serve()
    started = time.monotonic()
    server.stop(timeout=10)
    assert not server.alive
    assert time.monotonic() - started < 5


@pytest.fixture
def lazy_server(sink):
    server = serve_app(bind_socket("127.0.0.1", 0), healthy_status, sink, lazy=True)
    yield server
    server.stop(timeout=5)


def test_lazy_endpoint_loads_at_the_first_request(lazy_server):
    assert not lazy_server.loaded
    response = httpx.get(lazy_server.url + "/healthz", timeout=30)
    assert response.status_code == 200 and lazy_server.loaded


def test_lazy_endpoint_loads_when_warmed_up_without_any_request(lazy_server):
    lazy_server.warm_up(0)
    assert lazy_server.wait_serving(20)


def test_lazy_endpoint_stops_without_ever_loading(lazy_server):
    lazy_server.stop(timeout=5)
    assert not lazy_server.alive and not lazy_server.loaded


def test_workers_turning_healthy_warm_the_endpoint_up(lazy_server):
    warmer = WarmUpWhenHealthy(lazy_server, delay=0)
    warmer.emit(agent_event(state="INIT"))
    assert not lazy_server.loaded
    warmer.emit(agent_event(state="HEALTHY"))
    assert lazy_server.wait_serving(20)


def test_importing_the_endpoint_does_not_import_the_web_stack():
    code = ("import sys, telemetry.endpoint, telemetry.sinks.endpoint_warm_up; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


# ---- schema fuzzing ---------------------------------------------------------------------------


def _fuzz_app():
    sink = MemorySink()
    for r in range(3):
        sink.emit(failed_event(r))
    sink.emit(Event("odd", EventSource.AGENT, 2, {"inf": float("inf"), "obj": "x"}))
    return create_app(healthy_status, sink, stacks=_two_ranks_stacks)


def _two_ranks_stacks():
    rank = {"local_rank": 0, "pid": 10, "where": "collective", "detail": "all_reduce",
            "code": "/jobs/train.py:44", "function": "main", "method": "py-spy", "note": None,
            "seconds_since_progress": 6.0, "last_progress_time": 1.0, "stack": "..."}
    return {"taken_at": 7.0, "capture_ms": 80.0, "suspects": [1], "summary": "suspect rank 1",
            "ranks": [{"rank": 0, **rank}, {**rank, "rank": 1, "local_rank": 1, "where": "user_code"}]}


try:
    import schemathesis
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - schemathesis is in the dev extra
    schemathesis = None

if schemathesis is not None:
    fuzz_schema = schemathesis.openapi.from_asgi("/openapi.json", _fuzz_app())

    @fuzz_schema.exclude(path="/events/stream").parametrize()
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    def test_openapi_fuzz_finds_no_server_errors_or_schema_violations(case):
        case.call_and_validate(timeout=5)

    # A stream never ends: each case is cut after a short read, and there are fewer of them.
    @fuzz_schema.include(path="/events/stream").parametrize()
    @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
    def test_openapi_fuzz_of_the_event_stream(case):
        case.call_and_validate(timeout=0.1)
