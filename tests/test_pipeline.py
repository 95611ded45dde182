"""The pipeline never blocks or breaks its producer, counts what it drops exactly, and flushes on
every exit path; configure() builds it from arguments and ELASTISCOPE_* variables."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import telemetry
from telemetry import ConfigError, Event, EventSource, MetricPoint
from telemetry.config import resolve_settings
from telemetry.pipeline import Pipeline, Sink, get_pipeline
from telemetry_jobs import isolated_telemetry, run_job  # noqa: F401  (fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def event(i: int = 0) -> Event:
    return Event("test.event", EventSource.AGENT, 1, {"i": i})


class GatedSink(Sink):
    """Blocks in emit until the gate opens; remembers what it got."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.received: list = []

    def emit(self, record) -> None:
        self.entered.set()
        self.gate.wait(10)
        self.received.append(record)


class RaisingSink(Sink):
    name = "raising"

    def __init__(self, synchronous: bool = False) -> None:
        self.synchronous = synchronous
        self.calls = 0

    def emit(self, record) -> None:
        self.calls += 1
        raise RuntimeError("sink is broken")


class FlakySink(Sink):
    """Raises while ``failing`` is set."""

    name = "flaky"
    synchronous = True

    def __init__(self) -> None:
        self.failing = True

    def emit(self, record) -> None:
        if self.failing:
            raise OSError("disk full")


def test_publish_returns_while_a_queued_sink_is_blocked():
    sink = GatedSink()
    p = Pipeline([sink])
    p.publish(event())
    assert sink.entered.wait(5)
    for i in range(1000):  # would hang here if publish waited for the sink
        p.publish(event(i))
    assert len(sink.received) == 0
    sink.gate.set()
    assert p.close(timeout=5)
    assert len(sink.received) == 1001


@pytest.fixture
def frequent_thread_switches():
    """Switch threads every microsecond, so unguarded read-modify-writes really interleave."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def test_full_queue_drop_count_is_exact_under_concurrent_producers(frequent_thread_switches):
    sink = GatedSink()
    p = Pipeline([sink], queue_size=100)
    producers, per_producer = 4, 5000

    def produce():
        for i in range(per_producer):
            p.publish(event(i))

    threads = [threading.Thread(target=produce) for _ in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    sink.gate.set()
    assert p.close(timeout=10)
    stats = p.stats()["gated"]
    total = producers * per_producer
    assert stats["offered"] == total
    assert stats["dropped"] == total - len(sink.received)
    assert stats["dropped"] > 0
    assert stats["delivered"] == len(sink.received)


def test_sync_sink_counters_are_exact_under_concurrent_producers(frequent_thread_switches):
    class Counting(Sink):
        name = "counting"
        synchronous = True

        def emit(self, record):
            pass

    p = Pipeline([Counting()])
    threads = [threading.Thread(target=lambda: [p.publish(event()) for _ in range(20000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert p.stats()["counting"] == {"offered": 80000, "delivered": 80000, "dropped": 0, "errors": 0}


def test_queued_sink_that_raises_is_counted_and_never_reaches_the_producer():
    sink = RaisingSink()
    p = Pipeline([sink])
    for i in range(50):
        p.publish(event(i))
    assert p.flush(timeout=5)
    assert p.stats()["raising"]["errors"] == 50
    assert sink.calls == 50


def test_synchronous_sink_that_raises_never_reaches_the_producer():
    p = Pipeline([RaisingSink(synchronous=True)])
    for i in range(10):
        p.publish(event(i))
        p.publish(MetricPoint(0.0, "torchelastic", "x", 1))
    assert p.stats()["raising"]["errors"] == 20


def test_sink_failures_are_logged_once_per_burst(caplog):
    sink = FlakySink()
    p = Pipeline([sink])
    with caplog.at_level(logging.INFO, logger="elastiscope.telemetry"):
        for i in range(100):
            p.publish(event(i))
        sink.failing = False
        p.publish(event())
        sink.failing = True
        p.publish(event())
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    recoveries = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(failures) == 2  # the first burst of 100, then the second burst
    assert len(recoveries) == 1 and "99 more" in recoveries[0].getMessage()


def test_flush_gives_up_at_its_deadline_when_a_sink_is_stuck():
    sink = GatedSink()
    p = Pipeline([sink])
    p.publish(event())
    started = time.monotonic()
    assert p.flush(timeout=0.2) is False
    assert time.monotonic() - started < 2
    sink.gate.set()
    assert p.flush(timeout=5) is True


def test_close_counts_undelivered_records_as_dropped():
    sink = GatedSink()
    p = Pipeline([sink])
    for i in range(10):
        p.publish(event(i))
    assert sink.entered.wait(5)
    assert p.close(timeout=0.2) is False
    stats = p.stats()["gated"]
    assert stats["dropped"] == 9  # the one in emit is in flight, not dropped
    sink.gate.set()


def test_records_published_after_close_are_dropped_and_counted():
    sink = GatedSink()
    sink.gate.set()
    p = Pipeline([sink])
    p.close(timeout=1)
    p.publish(event())
    assert p.stats()["gated"]["dropped"] == 1
    assert sink.received == []


def test_sinks_only_receive_the_record_types_they_want():
    class EventsOnly(Sink):
        name = "events_only"
        synchronous = True
        metrics = False

        def __init__(self):
            self.got = []

        def emit(self, record):
            self.got.append(record)

    sink = EventsOnly()
    p = Pipeline([sink])
    p.publish(MetricPoint(0.0, "g", "n", 1))
    p.publish(event())
    assert [type(r) for r in sink.got] == [Event]


# -- repeated metric points -------------------------------------------------------------


class LatestValueSink(Sink):
    """Keeps the latest value per point name and counts emits: the kind of state a repeat
    cannot change. Points named ``<family>.<member>`` share the key ``<family>``."""

    name = "latest"
    synchronous = True

    def __init__(self) -> None:
        self.state: dict = {}
        self.emits = 0

    def repeat_key(self, point):
        return point.name.split(".")[0] if point.name.startswith("fam") else point.name

    def emit(self, record) -> None:
        self.emits += 1
        if isinstance(record, MetricPoint):
            family = self.repeat_key(record)
            self.state[family] = (record.name, record.value)
        else:
            self.state.clear()


def point(name: str, value=1) -> MetricPoint:
    return MetricPoint(0.0, "g", name, value)


def test_repeated_points_reach_a_repeat_skipping_sink_once_and_count_as_delivered():
    sink = LatestValueSink()
    p = Pipeline([sink])
    for _ in range(5):
        p.publish(point("a", 1))
        p.publish_metric("g", "a", 1)
    assert sink.emits == 1
    assert p.stats()["latest"] == {"offered": 10, "delivered": 10, "dropped": 0, "errors": 0}


def test_a_changed_value_or_an_event_lets_the_next_point_through():
    sink = LatestValueSink()
    p = Pipeline([sink])
    for value in (1, 2, 2, 1):
        p.publish_metric("g", "a", value)
    assert sink.emits == 3
    p.publish(event())  # the sink forgets its state: the same point must reach it again
    p.publish_metric("g", "a", 1)
    assert sink.state == {"a": ("a", 1)}


def test_points_sharing_a_key_are_delivered_each_time_they_alternate():
    sink = LatestValueSink()
    p = Pipeline([sink])
    for name in ("fam.healthy", "fam.healthy", "fam.failed", "fam.healthy", "fam.healthy"):
        p.publish_metric("g", name, 1)
    assert sink.emits == 3
    assert sink.state == {"fam": ("fam.healthy", 1)}


def test_a_sink_without_repeat_key_receives_every_repeat():
    class Every(Sink):
        name, synchronous, events = "every", True, False

        def __init__(self):
            self.values = []

        def emit(self, record):
            self.values.append(record.value)

    every, latest = Every(), LatestValueSink()
    p = Pipeline([every, latest])
    for _ in range(3):
        p.publish_metric("g", "a", 7)
    assert every.values == [7, 7, 7] and latest.emits == 1


def test_a_value_that_cannot_be_compared_is_still_delivered():
    class Array:  # like a numpy array: == answers element-wise, and its truth is an error
        def __eq__(self, other):
            raise ValueError("truth value of an array is ambiguous")

    sink = LatestValueSink()
    p = Pipeline([sink])
    for _ in range(2):
        p.publish_metric("g", "a", Array())
    assert sink.emits == 2 and p.stats()["latest"]["delivered"] == 2


def test_a_point_published_during_another_threads_emit_leaves_sink_and_memory_agreeing():
    """Thread a is inside the sink's emit (its point applied, the pipeline not yet told);
    thread b publishes another point of the same key. Unguarded, b's point lands first and
    a's is remembered last, so a later repeat of a's point is skipped on a sink that holds b's."""

    class GatedLatest(LatestValueSink):
        def __init__(self):
            super().__init__()
            self.gate, self.inside, self.asked = threading.Event(), threading.Event(), threading.Event()

        def repeat_key(self, point):
            if point.name == "fam.b":
                self.asked.set()
            return super().repeat_key(point)

        def emit(self, record):
            super().emit(record)
            if record.name == "fam.a" and not self.gate.is_set():
                self.inside.set()
                self.gate.wait(10)

    sink = GatedLatest()
    p = Pipeline([sink])
    a = threading.Thread(target=p.publish_metric, args=("g", "fam.a", 1))
    a.start()
    assert sink.inside.wait(10)
    b = threading.Thread(target=p.publish_metric, args=("g", "fam.b", 1))
    b.start()
    assert sink.asked.wait(10)
    b.join(1.0)  # room for an unguarded b to finish; a guarded b waits for a's emit to end
    sink.gate.set()
    a.join(10)
    b.join(10)
    p.publish_metric("g", "fam.a", 1)
    assert sink.state["fam"] == ("fam.a", 1)


def test_prometheus_output_is_the_same_with_and_without_skipping_repeats(isolated_telemetry):
    """The per-pass metrics of the run loop, interleaved with state changes, restarts and run
    outcomes: the skipping pipeline must leave every series as applying every point would."""
    import random

    from prometheus_client import generate_latest

    from telemetry import metrics
    from telemetry.sinks.prometheus import PrometheusSink

    plain, skipping = PrometheusSink(metrics.AgentMetrics(), "r"), PrometheusSink(metrics.AgentMetrics(), "r")
    plain.repeat_key = None  # applies every point
    pipelines = [Pipeline([plain]), Pipeline([skipping])]
    assert pipelines[1]._repeat_skipper is not None

    def state_change(state):
        return Event("elastiscope.agent.state_change", EventSource.AGENT, 1,
                     {"role": "r", "state": state, "previous_state": "INIT"})

    rng = random.Random(3)
    records = [Event("elastiscope.agent.run_start", EventSource.AGENT, 1,
                     {"role": "r", "run_id": "x", "max_restarts": 3, "rdzv_backend": "c10d"})]
    for _ in range(1000):
        kind = rng.random()
        if kind < 0.02:
            records.append(state_change(rng.choice(["HEALTHY", "FAILED", "UNHEALTHY"])))
        elif kind < 0.04:
            records.append(("workers.r.run_success_no_retries", 1))
        elif kind < 0.06:
            records.append(("LocalElasticAgent._start_workers.duration.ms", rng.choice([5, 7])))
        else:
            records.append(rng.choice([
                ("workers.r.remaining_restarts", rng.choice([3, 2])),
                ("workers.r.healthy", 1), ("workers.r.failed", 1), ("workers.r.unhealthy", 0),
                ("LocalElasticAgent._monitor_workers.success", 1),
                ("LocalElasticAgent._monitor_workers.duration.ms", rng.choice([0, 0, 1])),
            ]))
    for i, record in enumerate(records):
        for p in pipelines:
            if isinstance(record, Event):
                p.publish(record)
            else:
                p.publish_metric("torchelastic", *record)
        assert generate_latest(skipping.metrics.registry) == generate_latest(plain.metrics.registry), i
    stats = pipelines[1].stats()["prometheus"]
    assert stats["offered"] == stats["delivered"] == len(records)


# -- exit paths ------------------------------------------------------------------------

_SLOW_EXIT_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {repo!r})
    import telemetry
    from telemetry.pipeline import Sink

    class SlowFileSink(Sink):
        name = "slow_file"
        def __init__(self, path):
            self.f = open(path, "a")
        def emit(self, record):
            time.sleep(0.005)
            self.f.write(str(record.metadata["i"]) + "\\n")
            self.f.flush()

    telemetry.configure(prometheus=False, log_format="json", bridge_torch=False,
                        extra_sinks=[SlowFileSink(sys.argv[1])], env={{}})
    for i in range(100):
        telemetry.emit(telemetry.Event("test.event", telemetry.EventSource.AGENT, metadata={{"i": i}}))
    {ending}
""")


def _run_exit_script(tmp_path, ending: str) -> tuple[int, list[str]]:
    out = tmp_path / "delivered.txt"
    script = _SLOW_EXIT_SCRIPT.format(repo=REPO, ending=ending)
    proc = subprocess.run([sys.executable, "-c", script, str(out)], timeout=60, capture_output=True)
    lines = out.read_text().split() if out.exists() else []
    return proc.returncode, lines


def test_sigterm_flushes_queued_records_then_dies_by_the_signal(tmp_path):
    code, lines = _run_exit_script(tmp_path, "os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)")
    assert code == -15
    assert lines == [str(i) for i in range(100)]


def test_sigterm_arriving_inside_publish_still_flushes_without_deadlock(tmp_path):
    # The handler runs on the main thread between bytecodes, possibly while that thread holds
    # a delivery's lock in the middle of publish: simulate exactly that.
    ending = ("d = [d for d in telemetry.get_pipeline()._deliveries if d.sink.name == 'slow_file'][0]; "
              "d._count_lock.acquire(); os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)")
    started = time.monotonic()
    code, lines = _run_exit_script(tmp_path, ending)
    assert code == -15
    assert lines == [str(i) for i in range(100)]
    assert time.monotonic() - started < 20


def test_sigint_flushes_queued_records(tmp_path):
    code, lines = _run_exit_script(tmp_path, "os.kill(os.getpid(), signal.SIGINT); time.sleep(30)")
    assert code != 0
    assert lines == [str(i) for i in range(100)]


def test_normal_exit_flushes_queued_records(tmp_path):
    code, lines = _run_exit_script(tmp_path, "pass")
    assert code == 0
    assert lines == [str(i) for i in range(100)]


# -- a real job ------------------------------------------------------------------------

def test_real_job_succeeds_with_a_sink_that_raises_on_every_record(isolated_telemetry):
    broken = RaisingSink()
    broken_sync = RaisingSink(synchronous=True)
    broken_sync.name = "raising_sync"
    telemetry.configure(prometheus=True, log_format="json", extra_sinks=[broken, broken_sync], env={})
    result = run_job(fail_attempts=1, max_restarts=1)
    assert result.state.value == "SUCCEEDED"
    assert get_pipeline().flush(timeout=5)
    stats = get_pipeline().stats()
    assert stats["raising"]["errors"] == stats["raising"]["offered"] > 10
    assert stats["raising_sync"]["errors"] == stats["raising_sync"]["offered"] > 10
    from telemetry import metrics

    body = metrics.exposition(None)[0].decode()
    assert f'elastiscope_telemetry_sink_errors_total{{sink="raising"}} {float(stats["raising"]["errors"])}' in body


# -- configure() -------------------------------------------------------------------------

def test_configure_installs_memory_prometheus_and_event_log(isolated_telemetry, tmp_path):
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


def test_cli_flags_become_configure_arguments():
    import argparse

    from telemetry.config import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--event-log", "/tmp/x/", "--log-format", "json", "--no-prometheus",
                              "--otlp-endpoint", "http://127.0.0.1:4318", "--console-events"])
    assert settings_from_args(args) == {
        "event_log": "/tmp/x/", "log_format": "json", "prometheus": False,
        "otlp_endpoint": "http://127.0.0.1:4318", "pushgateway": None, "console_events": True,
    }


def test_configure_keeps_the_event_history_of_the_previous_pipeline(isolated_telemetry):
    telemetry.emit(Event("before.configure", EventSource.AGENT))
    telemetry.configure(prometheus=False, log_format="json", bridge_torch=False, env={})
    names = [e.name for e in get_pipeline().find("memory").events()]
    assert "before.configure" in names


def test_shutdown_flushes_and_closes(isolated_telemetry):
    sink = GatedSink()
    sink.gate.set()
    telemetry.configure(prometheus=False, log_format="json", bridge_torch=False, extra_sinks=[sink], env={})
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
