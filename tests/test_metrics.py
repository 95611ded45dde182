"""Every torchelastic put_metric name and every mapped event lands on its documented series."""

from __future__ import annotations

import http.server
import threading

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import telemetry
from agent import torch_patches
from telemetry import Event, EventSource, MetricPoint, names
from telemetry.pipeline import Pipeline
from telemetry.prometheus.catalogue import EVENT_KINDS_AT_ZERO
from telemetry.prometheus.classify import classify_metric
from telemetry.prometheus.exposition import render
from telemetry.prometheus.push import push
from telemetry.prometheus.registry import AgentMetrics
from telemetry.sinks.prometheus import PrometheusSink
from telemetry_jobs import isolated_telemetry  # noqa: F401  (fixture)


@pytest.fixture
def sink():
    return PrometheusSink(AgentMetrics(stats_source=lambda: {}))


def value(sink, series, **labels):
    return sink.registry.get_sample_value(series, labels)


def ev(name, source=EventSource.AGENT, ts=1000, **metadata):
    return Event(name, source, ts, metadata)


def put(sink, name, v, group="torchelastic"):
    sink.emit(MetricPoint(0.0, group, name, v))


# -- put_metric names ----------------------------------------------------------------------

@pytest.mark.parametrize("suffix, outcome, retried", [
    ("run_success_with_retries", "succeeded", "true"),
    ("run_success_no_retries", "succeeded", "false"),
    ("run_failed_with_retries", "failed", "true"),
    ("run_failed_no_retries", "failed", "false"),
])
def test_run_outcome_metrics_count_runs_by_outcome_and_retried(sink, suffix, outcome, retried):
    put(sink, f"workers.trainer.{suffix}", 1)
    put(sink, f"workers.trainer.{suffix}", 1)
    assert value(sink, "elastiscope_runs_total", role="trainer", outcome=outcome, retried=retried) == 2


def test_run_outcome_with_value_zero_creates_the_series_without_counting(sink):
    put(sink, "workers.trainer.run_failed_no_retries", 0)
    assert value(sink, "elastiscope_runs_total", role="trainer", outcome="failed", retried="false") == 0


def test_flakiness_and_remaining_restarts_are_gauges(sink):
    put(sink, "workers.trainer.flakiness", 50)
    put(sink, "workers.trainer.remaining_restarts", 2)
    put(sink, "workers.trainer.remaining_restarts", 1)
    assert value(sink, "elastiscope_flakiness_percent", role="trainer") == 50
    assert value(sink, "elastiscope_remaining_restarts", role="trainer") == 1


def test_state_metric_sets_one_state_and_zeroes_the_other_six(sink):
    put(sink, "workers.trainer.healthy", 1)
    put(sink, "workers.trainer.failed", 1)
    states = {s: value(sink, "elastiscope_worker_group_state", role="trainer", state=s)
              for s in names.WORKER_STATES}
    assert states == {s: (1.0 if s == "FAILED" else 0.0) for s in names.WORKER_STATES}


def test_worker_resource_samples_become_cpu_counter_and_rss_gauge(sink):
    put(sink, "workers.trainer.worker.3.cpu_seconds", 1.5)
    put(sink, "workers.trainer.worker.3.cpu_seconds", 2.5)
    put(sink, "workers.trainer.worker.3.rss_bytes", 1e8)
    assert value(sink, "elastiscope_worker_cpu_seconds_total", role="trainer", local_rank="3") == 2.5
    assert value(sink, "elastiscope_worker_resident_memory_bytes", role="trainer", local_rank="3") == 1e8


def test_prof_start_and_stop_durations_become_histograms_in_seconds(sink):
    sink.emit(ev("elastiscope.agent.run_start", role="trainer", max_restarts=3))
    put(sink, "LocalElasticAgent._start_workers.duration.ms", 250)
    put(sink, "LocalElasticAgent._stop_workers.duration.ms", 40)
    assert value(sink, "elastiscope_worker_start_duration_seconds_sum", role="trainer") == 0.25
    assert value(sink, "elastiscope_worker_stop_duration_seconds_count", role="trainer") == 1


def test_unknown_names_are_exported_generically_with_their_group(sink):
    put(sink, "SimpleElasticAgent._rendezvous.duration.ms", 12)
    put(sink, "my_counter", 7, group="my_app")
    assert value(sink, "elastiscope_torchelastic_metric", group="torchelastic",
                 name="SimpleElasticAgent._rendezvous.duration.ms") == 12
    assert value(sink, "elastiscope_torchelastic_metric", group="my_app", name="my_counter") == 7


@pytest.mark.parametrize("name, kind, labels", [
    ("workers.a.b.flakiness", "flakiness", ("a.b",)),
    ("workers.default.run_total", "run_total", ("default",)),
    ("workers.default.unhealthy", "group_state", ("default", "UNHEALTHY")),
    ("workers.x.worker.12.rss_bytes", "worker_rss", ("x", "12")),
    ("workers.flakiness", "generic", ()),
    ("SimpleElasticAgent.run.success", "generic", ()),
])
def test_classify_metric_parses_roles_with_dots_and_rejects_near_misses(name, kind, labels):
    target = classify_metric("torchelastic", name)
    assert (target.kind, target.labels) == (kind, labels)


# -- events ----------------------------------------------------------------------------------

def test_every_event_is_counted_by_name_and_source(sink):
    sink.emit(ev("x.y", EventSource.WORKER))
    sink.emit(ev("x.y", EventSource.WORKER))
    assert value(sink, "elastiscope_events_total", name="x.y", source="WORKER") == 2


def test_run_start_sets_agent_info_and_restart_budget(sink):
    sink.emit(ev("elastiscope.agent.run_start", run_id="r1", role="trainer", rdzv_backend="c10d",
                 hostname="h", version="0.1.0", max_restarts=3))
    sink.emit(ev("elastiscope.agent.run_start", run_id="r2", role="trainer", rdzv_backend="c10d",
                 hostname="h", version="0.1.0", max_restarts=3))
    info = {"role": "trainer", "rdzv_backend": "c10d", "hostname": "h", "version": "0.1.0"}
    assert value(sink, "elastiscope_agent_info", run_id="r2", **info) == 1
    assert value(sink, "elastiscope_agent_info", run_id="r1", **info) is None  # only the current run
    assert value(sink, "elastiscope_max_restarts", role="trainer") == 3
    assert value(sink, "elastiscope_remaining_restarts", role="trainer") == 3


def test_restart_counts_by_reason_and_times_until_healthy_again(sink):
    sink.emit(ev("elastiscope.agent.restart", ts=10_000, role="trainer", reason="failure", remaining_restarts=2))
    sink.emit(ev("elastiscope.agent.state_change", ts=12_500, role="trainer", state="HEALTHY"))
    assert value(sink, "elastiscope_restarts_total", role="trainer", reason="failure") == 1
    assert value(sink, "elastiscope_remaining_restarts", role="trainer") == 2
    assert value(sink, "elastiscope_restart_duration_seconds_sum", role="trainer", reason="failure") == 2.5


def test_state_change_event_sets_the_group_state(sink):
    sink.emit(ev("elastiscope.agent.state_change", role="trainer", state="UNHEALTHY"))
    assert value(sink, "elastiscope_worker_group_state", role="trainer", state="UNHEALTHY") == 1
    assert value(sink, "elastiscope_worker_group_state", role="trainer", state="HEALTHY") == 0


def test_worker_failed_counts_by_exit_code_or_signal_and_observes_detection_latency(sink):
    sink.emit(ev("elastiscope.worker.failed", EventSource.WORKER, role="trainer", local_rank=1,
                 exit_code=3, signal=None, detect_latency_ms=4.0))
    sink.emit(ev("elastiscope.worker.failed", EventSource.WORKER, role="trainer", local_rank=0,
                 exit_code=-9, signal="SIGKILL", detect_latency_ms=2.0))
    assert value(sink, "elastiscope_worker_failures_total", role="trainer", local_rank="1",
                 exit_code="3", signal="") == 1
    assert value(sink, "elastiscope_worker_failures_total", role="trainer", local_rank="0",
                 exit_code="-9", signal="SIGKILL") == 1
    assert value(sink, "elastiscope_failure_detection_seconds_sum", role="trainer") == pytest.approx(0.006)


def test_rendezvous_and_rank_assignment_durations_come_from_torch_duration_events(sink):
    sink.emit(ev("torchelastic.worker.status.RENDEZVOUS", role="trainer", duration_ms=1500.0))
    sink.emit(ev("torchelastic.worker.status.ASSIGN_WORKER_RANKS", role="trainer", duration_ms=3.0))
    assert value(sink, "elastiscope_rendezvous_duration_seconds_sum", role="trainer") == 1.5
    assert value(sink, "elastiscope_rank_assignment_duration_seconds_sum", role="trainer") == 0.003


def test_rendezvous_complete_sets_world_and_group_sizes(sink):
    sink.emit(ev("elastiscope.rendezvous.complete", role="trainer", group_rank=1, group_world_size=2, world_size=8))
    assert value(sink, "elastiscope_world_size", role="trainer") == 8
    assert value(sink, "elastiscope_group_rank", role="trainer") == 1
    assert value(sink, "elastiscope_group_world_size", role="trainer") == 2


# -- children at 0 ---------------------------------------------------------------------------
# increase() and rate() need a sample before the first increment: every child whose label
# values are known up front exists at 0 from then on (docs/reference.md, column Starts at 0).

def attached_registry():
    """The registry of the Prometheus sink configure() attached: what /metrics serves."""
    return telemetry.get_pipeline().find("prometheus").registry


def exposed_samples(accept=None) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value, as a scrape of the attached sink's registry reads them."""
    body, _ = render(attached_registry(), accept)
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def sample(samples, series, **labels):
    return samples.get((series, frozenset(labels.items())))


RUN_START = dict(run_id="r1", role="trainer", rdzv_backend="c10d", hostname="h", version="0.1.0",
                 max_restarts=3)


def test_a_configured_pipeline_exposes_its_counters_at_zero_before_anything_happened(
        isolated_telemetry, tmp_path):
    telemetry.configure(event_log=tmp_path / "run.jsonl", log_format="json", env={})
    samples = exposed_samples()
    for sink_name in ("memory", "log_context", "prometheus", "jsonl"):
        assert sample(samples, "elastiscope_telemetry_dropped_total", sink=sink_name) == 0, sink_name
        assert sample(samples, "elastiscope_telemetry_sink_errors_total", sink=sink_name) == 0, sink_name
    for name, source in EVENT_KINDS_AT_ZERO:
        assert sample(samples, "elastiscope_events_total", name=name, source=source) == 0, name


def test_a_configured_pipeline_exposes_the_runs_counters_at_zero_from_its_start(isolated_telemetry):
    telemetry.configure(log_format="json", env={})
    telemetry.emit(ev("elastiscope.agent.run_start", **RUN_START))
    samples = exposed_samples()
    for reason in ("failure", "membership"):
        assert sample(samples, "elastiscope_restarts_total", role="trainer", reason=reason) == 0, reason
        assert sample(samples, "elastiscope_restart_duration_seconds_count",
                      role="trainer", reason=reason) == 0, reason
    for outcome in ("succeeded", "failed"):
        for retried in ("true", "false"):
            assert sample(samples, "elastiscope_runs_total",
                          role="trainer", outcome=outcome, retried=retried) == 0, (outcome, retried)
    assert sample(samples, "elastiscope_flakiness_percent", role="trainer") == 0
    for histogram in ("failure_detection", "rendezvous_duration", "rank_assignment_duration",
                      "worker_start_duration", "worker_stop_duration"):
        name = f"elastiscope_{histogram}_seconds"
        assert sample(samples, f"{name}_count", role="trainer") == 0, name
        assert sample(samples, f"{name}_bucket", role="trainer", le="+Inf") == 0, name


def test_zero_series_are_in_the_openmetrics_exposition_too(isolated_telemetry):
    telemetry.configure(log_format="json", env={})
    telemetry.emit(ev("elastiscope.agent.run_start", **RUN_START))
    body, _ = render(attached_registry(), "application/openmetrics-text; version=1.0.0")
    assert 'elastiscope_restarts_total{reason="failure",role="trainer"} 0.0' in body.decode()


def test_flakiness_is_0_from_the_run_start_until_the_run_reports_it(sink):
    # A run that has spent no restart is 0 flaky; torch reports the value only at the end, which
    # the last scrape before the agent exits can miss (the dashboard's Flakiness panel went blank).
    assert value(sink, "elastiscope_flakiness_percent", role="trainer") is None
    sink.emit(ev("elastiscope.agent.run_start", **RUN_START))
    assert value(sink, "elastiscope_flakiness_percent", role="trainer") == 0
    put(sink, "workers.trainer.flakiness", 50)
    sink.emit(ev("elastiscope.agent.run_start", **{**RUN_START, "run_id": "r2"}))
    assert value(sink, "elastiscope_flakiness_percent", role="trainer") == 50  # kept, as counts are


def test_the_first_restart_counts_on_top_of_the_zero(sink):
    sink.emit(ev("elastiscope.agent.run_start", **RUN_START))
    assert value(sink, "elastiscope_restarts_total", role="trainer", reason="failure") == 0
    sink.emit(ev("elastiscope.agent.restart", role="trainer", reason="failure", remaining_restarts=2))
    assert value(sink, "elastiscope_restarts_total", role="trainer", reason="failure") == 1
    assert value(sink, "elastiscope_restarts_total", role="trainer", reason="membership") == 0


def test_a_later_run_start_keeps_what_was_counted(sink):
    sink.emit(ev("elastiscope.agent.run_start", **RUN_START))
    sink.emit(ev("elastiscope.agent.restart", role="trainer", reason="failure", remaining_restarts=2))
    sink.emit(ev("torchelastic.worker.status.RENDEZVOUS", role="trainer", duration_ms=10.0))
    sink.emit(ev("elastiscope.agent.run_start", **{**RUN_START, "run_id": "r2"}))
    assert value(sink, "elastiscope_restarts_total", role="trainer", reason="failure") == 1
    assert value(sink, "elastiscope_rendezvous_duration_seconds_count", role="trainer") == 1


@pytest.mark.parametrize("max_restarts, backend, reasons", [
    (3, "c10d", {"failure", "membership"}),
    (0, "c10d", {"membership"}),  # no budget: a failure ends the run, it never restarts it
    (3, "static", {"failure"}),   # a static rendezvous' membership never changes
    (0, "static", set()),
    (None, None, {"failure", "membership"}),  # unknown: both stay possible
])
def test_only_restart_reasons_that_can_happen_start_at_zero(sink, max_restarts, backend, reasons):
    sink.emit(ev("elastiscope.agent.run_start", role="trainer", rdzv_backend=backend, max_restarts=max_restarts))
    body, _ = _render(sink, None)
    created = {s.labels["reason"] for f in text_string_to_metric_families(body.decode())
               if f.name == "elastiscope_restarts" for s in f.samples}
    assert created == reasons
    for reason in reasons:
        assert value(sink, "elastiscope_restart_duration_seconds_count", role="trainer", reason=reason) == 0


def test_series_whose_label_values_come_with_the_event_are_not_created_up_front(sink):
    # exit_code/signal are known only at the failure; a rank's CPU only once the agent samples it.
    sink.emit(ev("elastiscope.agent.run_start", **RUN_START))
    sink.emit(ev("torchelastic.worker.status.START", EventSource.WORKER, role="trainer"))
    body, _ = _render(sink, None)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["elastiscope_worker_failures"].samples == []
    assert families["elastiscope_worker_cpu_seconds"].samples == []


# -- registry, health, exposition, push -------------------------------------------------------

def test_sink_health_series_report_pipeline_drops_and_errors():
    class Failing(telemetry.Sink):
        name = "failing"
        synchronous = True

        def emit(self, record):
            raise RuntimeError("no")

    pipeline = Pipeline([Failing()])
    m = AgentMetrics(stats_source=pipeline.stats)
    pipeline.publish(ev("x"))
    pipeline.publish(ev("x"))
    assert m.registry.get_sample_value("elastiscope_telemetry_sink_errors_total", {"sink": "failing"}) == 2
    assert m.registry.get_sample_value("elastiscope_telemetry_dropped_total", {"sink": "failing"}) == 0


def test_series_live_on_a_private_registry_not_the_global_one(sink):
    put(sink, "workers.trainer.flakiness", 1)
    assert REGISTRY.get_sample_value("elastiscope_flakiness_percent", {"role": "trainer"}) is None


def test_created_samples_are_not_exported(sink):
    put(sink, "workers.trainer.run_success_no_retries", 1)
    sink.emit(ev("torchelastic.worker.status.RENDEZVOUS", role="trainer", duration_ms=1.0))
    body, _ = _render(sink, None)
    assert "_created" not in body.decode()


def test_torch_group_handlers_set_before_keep_receiving_their_group(isolated_telemetry, monkeypatch):
    import torch.distributed.elastic.metrics as torch_metrics

    monkeypatch.setattr(torch_metrics.api, "_metrics_map", {})
    seen = []

    class GroupHandler(torch_metrics.MetricHandler):
        def emit(self, metric_data):
            seen.append((metric_data.group_name, metric_data.name))

    torch_metrics.configure(GroupHandler(), "torchelastic")
    telemetry.configure(log_format="json", env={})
    torch_patches.apply()  # what constructing an agent does
    try:
        torch_metrics.put_metric("workers.trainer.remaining_restarts", 2)
    finally:
        torch_patches.remove()
    assert seen == [("torchelastic", "workers.trainer.remaining_restarts")]
    assert attached_registry().get_sample_value(
        "elastiscope_remaining_restarts", {"role": "trainer"}) == 2


def _render(sink, accept):
    return render(sink.registry, accept)


def test_exposition_is_prometheus_text_by_default(sink):
    put(sink, "workers.trainer.flakiness", 10)
    body, content_type = _render(sink, None)
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["elastiscope_flakiness_percent"].samples[0].value == 10


def test_exposition_is_openmetrics_when_the_accept_header_asks(sink):
    put(sink, "workers.trainer.flakiness", 10)
    body, content_type = _render(sink, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")


def test_push_sends_the_registry_to_a_pushgateway(sink):
    received = {}

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            received["path"] = self.path
            received["body"] = self.rfile.read(int(self.headers["Content-Length"])).decode()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.handle_request, daemon=True).start()
    put(sink, "workers.trainer.flakiness", 33)
    try:
        push(sink.registry, f"http://127.0.0.1:{server.server_port}", grouping_key={"instance": "node1"})
    finally:
        server.server_close()
    assert received["path"] == "/metrics/job/elastiscope/instance/node1"
    assert 'elastiscope_flakiness_percent{role="trainer"} 33.0' in received["body"]


def test_pushgateway_sink_pushes_when_the_run_ends(isolated_telemetry):
    pushes = []
    pushed = threading.Event()

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            pushes.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
            self.send_response(200)
            self.end_headers()
            pushed.set()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        telemetry.configure(pushgateway=f"http://127.0.0.1:{server.server_port}", log_format="json",
                            env={})
        telemetry.put_metric("workers.trainer.flakiness", 12)
        telemetry.emit(ev("elastiscope.agent.run_end", role="trainer", state="SUCCEEDED"))
        assert pushed.wait(10)
        assert 'elastiscope_flakiness_percent{role="trainer"} 12.0' in pushes[0]
    finally:
        server.shutdown()
        server.server_close()


def test_push_raises_when_the_gateway_is_unreachable(sink):
    with pytest.raises(OSError):
        push(sink.registry, "http://127.0.0.1:9", timeout=2)


# -- torch's metric handler -----------------------------------------------------------------

def test_torch_put_metric_reaches_the_series_and_the_handler_set_before(isolated_telemetry, monkeypatch):
    import torch.distributed.elastic.metrics as torch_metrics

    monkeypatch.setattr(torch_metrics.api, "_metrics_map", {})  # other tests may have set group handlers
    seen = []

    class UserHandler(torch_metrics.MetricHandler):
        def emit(self, metric_data):
            seen.append(metric_data.name)

    previous = torch_metrics.api._default_metrics_handler
    torch_metrics.configure(UserHandler())
    try:
        telemetry.configure(log_format="json", env={})
        torch_patches.apply()  # what constructing an agent does
        torch_metrics.put_metric("workers.trainer.flakiness", 25)
        torch_metrics.put_metric("custom.thing", 4, "my_group")
        registry = attached_registry()
        assert registry.get_sample_value("elastiscope_flakiness_percent", {"role": "trainer"}) == 25
        assert registry.get_sample_value(
            "elastiscope_torchelastic_metric", {"group": "my_group", "name": "custom.thing"}) == 4
        assert seen == ["workers.trainer.flakiness", "custom.thing"]
    finally:
        torch_patches.remove()
        torch_metrics.configure(previous)


def test_bridged_rendezvous_events_skip_torchs_stack_walk():
    """While patched, torch's rendezvous modules record through our recorder (no
    inspect.stack() per event, which cost seconds per restart in a loaded agent), the events
    keep torch's names, and remove() hands torch its own recorder back."""
    import uuid

    import torch.distributed.elastic.events as torch_events
    import torch.distributed.elastic.rendezvous.dynamic_rendezvous as dyn
    import torch.distributed.elastic.rendezvous.registry as registry
    from torch.distributed.elastic.rendezvous import RendezvousParameters

    from telemetry import Pipeline, set_pipeline
    from telemetry.sinks.memory import MemorySink
    from telemetry_jobs import telemetry_isolation

    memory = MemorySink()
    params = RendezvousParameters(
        backend="c10d", endpoint="127.0.0.1:0", run_id=str(uuid.uuid4()), min_nodes=1, max_nodes=1)
    with telemetry_isolation():
        set_pipeline(Pipeline([memory]))
        torch_patches.apply()
        try:
            assert dyn.construct_and_record_rdzv_event is not torch_events.construct_and_record_rdzv_event
            handler = registry.get_rendezvous_handler(params)
            handler.next_rendezvous()
            handler.shutdown()
        finally:
            torch_patches.remove()
    assert dyn.construct_and_record_rdzv_event is torch_events.construct_and_record_rdzv_event
    recorded = {e.metadata["torch_event"] for e in memory.events() if e.name.startswith("elastiscope.rendezvous.")}
    assert "dynamic_rendezvous.py:DynamicRendezvousHandler.next_rendezvous" in recorded
    assert any(n.startswith("c10d_rendezvous_backend.py:") for n in recorded)
