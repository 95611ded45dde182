"""configure() builds the pipeline from arguments and ELASTISCOPE_* variables, records what it set
up in the state holder, and /metrics renders the Prometheus sink that ends up attached."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import telemetry
from telemetry import ConfigError, Event, EventSource, get_pipeline, state
from telemetry.config import render_metrics, resolve_settings
from helpers.sinks import GatedSink, event

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_configure_installs_memory_prometheus_and_event_log(tmp_path):
    p = telemetry.configure(event_log=tmp_path / "events.jsonl", log_format="json", env={})
    assert get_pipeline() is p
    assert [s.name for s in p.sinks()] == ["memory", "log_context", "prometheus", "jsonl"]


def test_configure_falls_back_to_environment_variables(tmp_path):
    env = {
        "ELASTISCOPE_EVENT_LOG": str(tmp_path) + "/",
        "ELASTISCOPE_LOG_FORMAT": "console",
        "ELASTISCOPE_PUSHGATEWAY": "http://127.0.0.1:9091/",
        "ELASTISCOPE_CONSOLE_EVENTS": "1",
        "ELASTISCOPE_TELEMETRY_QUEUE_SIZE": "64",
    }
    s = resolve_settings(env=env)
    assert (s.event_log, s.event_log_is_directory) == (tmp_path, True)
    assert s.log_format == "console"
    assert s.pushgateway == "http://127.0.0.1:9091"
    assert s.console_events is True
    assert s.queue_size == 64


def test_arguments_take_precedence_over_environment(tmp_path):
    s = resolve_settings(log_format="json", event_log=tmp_path / "a.jsonl",
                         env={"ELASTISCOPE_LOG_FORMAT": "console", "ELASTISCOPE_EVENT_LOG": "/nonexistent/x"})
    assert s.log_format == "json"
    assert s.event_log == tmp_path / "a.jsonl"


def test_standard_otel_endpoint_variable_turns_opentelemetry_on():
    s = resolve_settings(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert s.otel and s.otlp_endpoint == "http://127.0.0.1:4318"
    assert not resolve_settings(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1", "OTEL_SDK_DISABLED": "true"}).otel


@pytest.mark.parametrize("kwargs, env, names", [
    ({"log_format": "fancy"}, {}, "log format"),
    ({}, {"ELASTISCOPE_LOG_FORMAT": "xml"}, "ELASTISCOPE_LOG_FORMAT"),
    ({"otlp_endpoint": "localhost:4318"}, {}, "OTLP endpoint"),
    ({"pushgateway": "ftp://gateway"}, {}, "pushgateway"),
    ({}, {"ELASTISCOPE_TELEMETRY_QUEUE_SIZE": "-3"}, "QUEUE_SIZE"),
    ({}, {"ELASTISCOPE_CONSOLE_EVENTS": "maybe"}, "CONSOLE_EVENTS"),
    ({"event_log": "/proc/version/events.jsonl"}, {}, "event log"),
])
def test_bad_settings_raise_config_error_with_one_line_naming_the_setting(kwargs, env, names):
    with pytest.raises(ConfigError) as info:
        resolve_settings(env=env, **kwargs)
    message = str(info.value)
    assert names in message and "\n" not in message
    assert isinstance(info.value, ValueError)


def test_configure_keeps_the_event_history_of_the_previous_pipeline():
    telemetry.emit(Event("before.configure", EventSource.AGENT))
    telemetry.configure(prometheus=False, log_format="json", env={})
    names = [e.name for e in get_pipeline().find("memory").events()]
    assert "before.configure" in names


def test_shutdown_flushes_and_closes():
    sink = GatedSink()
    sink.gate.set()
    telemetry.configure(prometheus=False, log_format="json", extra_sinks=[sink], env={})
    for i in range(20):
        telemetry.emit(event(i))
    assert telemetry.shutdown(timeout=5)
    assert len(sink.received) == 20
    assert get_pipeline().closed


def test_import_telemetry_loads_no_heavy_library():
    code = ("import sys, telemetry; heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('prometheus_client', 'opentelemetry', 'structlog', 'torch', 'agent')]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stderr


def _worker_failure() -> Event:
    return Event("elastiscope.worker.failed", EventSource.AGENT, 1,
                 {"role": "trainer", "local_rank": 1, "exit_code": 3, "signal": None})


def test_metrics_shows_the_registry_of_a_prometheus_sink_given_as_an_extra_sink():
    from prometheus_client.parser import text_string_to_metric_families

    from telemetry.sinks.prometheus import PrometheusSink

    telemetry.configure(prometheus=False, log_format="json", extra_sinks=[PrometheusSink()], env={})
    telemetry.emit(_worker_failure())
    body, content_type = render_metrics(None)
    assert content_type.startswith("text/plain")
    samples = [s for f in text_string_to_metric_families(body.decode())
               if f.name == "elastiscope_worker_failures" for s in f.samples if s.name.endswith("_total")]
    assert [(s.labels["local_rank"], s.labels["exit_code"], s.value) for s in samples] == [("1", "3", 1.0)]


def test_metrics_shows_our_own_sink_when_prometheus_is_on():
    p = telemetry.configure(log_format="json", env={})
    telemetry.emit(_worker_failure())
    assert state.metrics_registry() is p.find("prometheus").registry
    assert b'elastiscope_worker_failures_total{' in render_metrics(None)[0]


def test_metrics_renders_openmetrics_when_asked():
    telemetry.configure(log_format="json", env={})
    body, content_type = render_metrics("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")


def test_metrics_before_any_prometheus_sink_lists_the_catalogue_without_samples():
    body, _ = render_metrics(None)
    assert b"# TYPE elastiscope_restarts_total counter" in body
    assert b"elastiscope_restarts_total{" not in body


def test_the_event_ring_is_the_processes_and_survives_reconfiguration():
    ring = state.event_ring()
    assert get_pipeline().find("memory") is ring
    first = telemetry.configure(prometheus=False, log_format="json", env={})
    second = telemetry.configure(prometheus=False, log_format="json", env={})
    assert first.find("memory") is second.find("memory") is ring
    assert first.closed and not second.closed


def test_reset_undoes_what_configure_set_up():
    import logging
    import signal

    telemetry.configure(log_format="json", run_id="r1", env={})
    assert logging.getLogger("agent").handlers and state.metrics_registry() is not None
    configured = get_pipeline()
    state.reset()
    assert configured.closed
    assert get_pipeline() is not configured and [s.name for s in get_pipeline().sinks()] == ["memory"]
    assert state.metrics_registry() is None and state.configured() == {}
    assert not logging.getLogger("agent").handlers and logging.getLogger("agent").propagate
    assert "run_id" not in telemetry.logs.bound()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_destinations_registered_in_a_test_are_forgotten_by_reset():
    state.register_destination("mine", None)
    assert "mine" in get_pipeline().destinations
    state.reset()
    assert "mine" not in get_pipeline().destinations
    assert "console" in get_pipeline().destinations and "framework_logger" in get_pipeline().destinations
