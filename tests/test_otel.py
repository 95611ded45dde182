"""OpenTelemetry over OTLP/HTTP: a real job's spans and events reach a collector, and a worker's
own span joins the agent's trace through TRACEPARENT.

The collector is a tiny http.server on 127.0.0.1; requests are decoded with the official
protobuf definitions (opentelemetry-proto).
"""

from __future__ import annotations

import gzip
import http.server
import subprocess
import sys
import threading
import time

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import telemetry
from telemetry import tracing
from telemetry_jobs import FLAKY_WORKER, run_job, telemetry_isolation

# The failing rank waits until every rank of its attempt has exported its span: otherwise the
# agent, rightly, stops a peer that is still starting up, and that peer's span never leaves.
TRACED_WORKER = """
import os, pathlib, time
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from telemetry.tracing import worker_context

provider = TracerProvider(resource=Resource.create({"service.name": "train-worker"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=os.environ["COLLECTOR"] + "/v1/traces")))
with provider.get_tracer("train").start_as_current_span(
        "train_step", context=worker_context(), attributes={"rank": int(os.environ["RANK"])}):
    pass
provider.shutdown()
markers = pathlib.Path(os.environ["MARKERS"])
(markers / f"{os.environ['RESTART_COUNT']}.{os.environ['RANK']}").touch()
deadline = time.monotonic() + 60
while len(list(markers.glob(os.environ["RESTART_COUNT"] + ".*"))) < int(os.environ["WORLD_SIZE"]):
    assert time.monotonic() < deadline, "peers never exported their spans"
    time.sleep(0.01)
""" + FLAKY_WORKER


class Collector:
    """Receives OTLP/HTTP protobuf requests and keeps the decoded ones."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []  # (service name, span)
        self.logs: list[object] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.receive(self.path, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._lock = threading.Lock()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def receive(self, path: str, body: bytes) -> None:
        with self._lock:
            if path == "/v1/traces":
                for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                    service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
                    for ss in rs.scope_spans:
                        self.spans.extend((service, s) for s in ss.spans)
            elif path == "/v1/logs":
                for rl in ExportLogsServiceRequest.FromString(body).resource_logs:
                    for sl in rl.scope_logs:
                        self.logs.extend(sl.log_records)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory):
    """One real job (a failed attempt, a restart, success) with traced workers, sent to a collector."""
    collector = Collector()
    markers = tmp_path_factory.mktemp("exported")
    try:
        with telemetry_isolation():
            telemetry.configure(otlp_endpoint=collector.url, log_format="json", env={})
            result = run_job(fail_attempts=1, max_restarts=1, code=TRACED_WORKER,
                             extra_env={"COLLECTOR": collector.url, "MARKERS": str(markers)}, run_id="otel-run")
            assert telemetry.shutdown(timeout=10)
        assert result.state.value == "SUCCEEDED"
        yield collector
    finally:
        collector.close()


def agent_spans(collector):
    return [s for service, s in collector.spans if service == "elastiscope-agent"]


def by_name(spans):
    out: dict[str, list] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


def test_run_is_the_root_of_one_trace_holding_every_step(traced_run):
    spans = agent_spans(traced_run)
    (run,) = by_name(spans)["run"]
    assert run.parent_span_id == b""
    assert {s.trace_id for s in spans} == {run.trace_id}
    assert {"rendezvous", "assign_worker_ranks", "start_workers", "monitoring", "restart",
            "stop_workers", "exit_barrier"} <= set(by_name(spans))


def test_first_attempt_steps_and_monitoring_are_children_of_run(traced_run):
    spans = by_name(agent_spans(traced_run))
    run_id = spans["run"][0].span_id
    for name in ("monitoring", "exit_barrier", "restart"):
        assert all(s.parent_span_id == run_id for s in spans[name]), name
    first_rendezvous = min(spans["rendezvous"], key=lambda s: s.start_time_unix_nano)
    assert first_rendezvous.parent_span_id == run_id


def test_restart_holds_stop_rendezvous_and_start_of_the_second_attempt(traced_run):
    spans = by_name(agent_spans(traced_run))
    (restart,) = spans["restart"]
    children = {s.name for group in spans.values() for s in group if s.parent_span_id == restart.span_id}
    assert children == {"stop_workers", "rendezvous", "assign_worker_ranks", "start_workers"}
    attrs = {a.key: a.value.string_value for a in restart.attributes}
    assert attrs == {"role": "trainer", "reason": "failure"}


def test_monitoring_spans_cover_each_attempt_between_start_and_the_next_step(traced_run):
    spans = by_name(agent_spans(traced_run))
    monitoring = sorted(spans["monitoring"], key=lambda s: s.start_time_unix_nano)
    starts = sorted(spans["start_workers"], key=lambda s: s.start_time_unix_nano)
    assert len(monitoring) == len(starts) == 2
    for m, start in zip(monitoring, starts):
        assert m.start_time_unix_nano >= start.end_time_unix_nano
    assert monitoring[0].end_time_unix_nano <= spans["restart"][0].start_time_unix_nano
    assert monitoring[1].end_time_unix_nano <= spans["exit_barrier"][0].start_time_unix_nano


def test_run_span_carries_the_run_identity_and_an_ok_status(traced_run):
    (run,) = by_name(agent_spans(traced_run))["run"]
    attrs = {a.key: a.value for a in run.attributes}
    assert attrs["elastiscope.run_id"].string_value == "otel-run"
    assert attrs["elastiscope.max_restarts"].int_value == 1
    assert run.status.code == run.status.STATUS_CODE_OK


def test_events_arrive_as_log_records_tied_to_their_spans(traced_run):
    spans = agent_spans(traced_run)
    records = {r.body.string_value: r for r in traced_run.logs}
    assert {"elastiscope.agent.run_start", "elastiscope.agent.restart", "elastiscope.agent.run_end",
            "torchelastic.worker.status.RENDEZVOUS", "torchelastic.worker.status.START"} <= set(records)
    restart_log = records["elastiscope.agent.restart"]
    (run,) = by_name(spans)["run"]
    assert restart_log.trace_id == run.trace_id and restart_log.span_id == run.span_id
    attrs = {a.key: a.value.string_value for a in restart_log.attributes}
    assert attrs["reason"] == "failure" and attrs["elastiscope.source"] == "AGENT"


def test_worker_spans_join_the_agent_trace_under_start_workers(traced_run):
    worker = [s for service, s in traced_run.spans if service == "train-worker"]
    agent = by_name(agent_spans(traced_run))
    run_trace = agent["run"][0].trace_id
    start_ids = {s.span_id for s in agent["start_workers"]}
    assert len(worker) == 4  # 2 workers x 2 attempts
    assert all(s.trace_id == run_trace and s.parent_span_id in start_ids for s in worker)


# -- without a collector ------------------------------------------------------------------

def test_tracing_is_a_no_op_until_configured():
    code = ("import sys, telemetry.tracing as t\n"
            "with t.span('run', role='x'): pass\n"
            "print(t.traceparent(), t.enabled(), any(m.startswith('opentelemetry') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["None", "False", "False"], out.stderr


def test_worker_context_is_none_without_a_valid_traceparent():
    assert tracing.worker_context({}) is None
    assert tracing.worker_context({"TRACEPARENT": "garbage"}) is None


def test_worker_context_parents_spans_on_the_given_traceparent():
    from opentelemetry import trace

    header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ctx = tracing.worker_context({"TRACEPARENT": header})
    parent = trace.get_current_span(ctx).get_span_context()
    assert (format(parent.trace_id, "032x"), format(parent.span_id, "016x")) == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")


def test_shutdown_keeps_its_deadline_when_the_collector_is_down(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # let the abandoned retries end soon after
    telemetry.configure(otlp_endpoint="http://127.0.0.1:9", log_format="json", prometheus=False, env={})
    with tracing.span("run", role="x"):
        telemetry.emit(telemetry.Event("e", telemetry.EventSource.AGENT))
    started = time.monotonic()
    telemetry.shutdown(timeout=1.0)
    assert time.monotonic() - started < 3.0
