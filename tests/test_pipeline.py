"""The pipeline never blocks or breaks its producer, counts what it drops exactly, hands each sink
only what it wants, and flushes on every exit path."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import telemetry
from telemetry import Event, EventSource, MetricPoint, get_pipeline
from telemetry.config import render_metrics
from telemetry.pipeline import Pipeline, Sink
from telemetry_jobs import run_job
from helpers.sinks import GatedSink, event

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RaisingSink(Sink):
    name = "raising"

    def __init__(self, synchronous: bool = False) -> None:
        self.synchronous = synchronous
        self.calls = 0

    def emit(self, record) -> None:
        self.calls += 1
        raise RuntimeError("sink is broken")


class KeepingSink(Sink):
    """Synchronous; keeps every record it is given."""

    synchronous = True

    def __init__(self, name: str = "keeping", events: bool = True) -> None:
        self.name, self.events = name, events
        self.records: list = []

    def emit(self, record) -> None:
        self.records.append(record)


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

    telemetry.configure(prometheus=False, log_format="json", extra_sinks=[SlowFileSink(sys.argv[1])], env={{}})
    for i in range(100):
        telemetry.emit(telemetry.Event("test.event", telemetry.EventSource.AGENT, metadata={{"i": i}}))
    {ending}
""")


def _run_exit_script(tmp_path, ending: str) -> tuple[int, list[str]]:
    out = tmp_path / "delivered.txt"
    script = _SLOW_EXIT_SCRIPT.format(repo=REPO, ending=ending)
    # SIGINT as a process started from a terminal has it: a shell's background job (a CI runner,
    # a nohup) inherits it ignored, and Python then installs no KeyboardInterrupt handler.
    proc = subprocess.run([sys.executable, "-c", script, str(out)], timeout=60, capture_output=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = out.read_text().split() if out.exists() else []
    return proc.returncode, lines


def test_sigterm_flushes_queued_records_then_dies_by_the_signal(tmp_path):
    code, lines = _run_exit_script(tmp_path, "os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)")
    assert code == -15
    assert lines == [str(i) for i in range(100)]


def test_sigterm_arriving_inside_publish_still_flushes_without_deadlock(tmp_path):
    # The handler runs on the main thread between bytecodes, possibly while that thread holds
    # a delivery's lock in the middle of publish: simulate exactly that.
    ending = ("telemetry.get_pipeline().delivery('slow_file').count_lock.acquire(); "
              "os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)")
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

def test_real_job_succeeds_with_a_sink_that_raises_on_every_record():
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
    body = render_metrics(None)[0].decode()
    assert f'elastiscope_telemetry_sink_errors_total{{sink="raising"}} {float(stats["raising"]["errors"])}' in body


def test_a_sink_that_overrides_wants_gets_only_the_records_it_chooses():
    class FailuresOnly(Sink):
        name = "failures_only"
        synchronous = True

        def __init__(self):
            self.got = []

        def wants(self, record):
            return isinstance(record, Event) and record.name.endswith(".failed")

        def emit(self, record):
            self.got.append(record.name)

    sink = FailuresOnly()
    p = Pipeline([sink])
    p.publish(Event("worker.failed", EventSource.AGENT, 1))
    p.publish(event())
    p.publish(MetricPoint(0.0, "g", "n", 1))
    assert sink.got == ["worker.failed"]
    assert p.stats()["failures_only"]["offered"] == 1


def test_a_sink_whose_wants_raises_does_not_keep_records_from_the_others():
    class Confused(Sink):
        name, synchronous = "confused", True

        def wants(self, record):
            raise RuntimeError("cannot tell")

        def emit(self, record):
            raise AssertionError("never asked to emit")

    every = KeepingSink("every")
    p = Pipeline([Confused(), every])
    p.publish(event())
    p.publish(MetricPoint(0.0, "g", "n", 1))
    assert len(every.records) == 2


def test_every_metric_point_is_delivered_even_a_repeat():
    class Values(Sink):
        name, synchronous, events = "values", True, False

        def __init__(self):
            self.values = []

        def emit(self, record):
            self.values.append((record.group_name, record.name, record.value))

    sink = Values()
    p = Pipeline([sink])
    for _ in range(3):
        p.publish(MetricPoint(0.0, "g", "a", 7))
    assert sink.values == [("g", "a", 7)] * 3
    assert p.stats()["values"] == {"offered": 3, "delivered": 3, "dropped": 0, "errors": 0}


def test_a_point_published_by_its_fields_reaches_each_sink_as_one_record():
    first, second = KeepingSink("values", events=False), KeepingSink("values2", events=False)
    p = Pipeline([first, second])
    before = time.time()
    p.publish_metric("g", "a", 7)
    assert len(first.records) == 1 and first.records == second.records
    point = first.records[0]
    assert type(point) is MetricPoint and (point.group_name, point.name, point.value) == ("g", "a", 7)
    assert before <= point.timestamp <= time.time()


def test_a_sink_with_wants_point_is_asked_by_the_fields_and_never_by_the_record():
    class ByFields(Sink):
        name, synchronous, events = "by_fields", True, False

        def __init__(self):
            self.asked, self.got = [], []

        def wants(self, record):
            raise AssertionError("asked with a record for a point published by its fields")

        def wants_point(self, group, name, value):
            self.asked.append((group, name, value))
            return value != 0

        def emit(self, record):
            self.got.append(record.value)

    picky, every = ByFields(), KeepingSink("every", events=False)
    p = Pipeline([picky, every])
    for value in (0, 1, 0):
        p.publish_metric("g", "n", value)
    assert picky.asked == [("g", "n", 0), ("g", "n", 1), ("g", "n", 0)]
    assert picky.got == [1] and [r.value for r in every.records] == [0, 1, 0]
    assert p.stats()["by_fields"]["offered"] == 1


def test_a_sink_whose_wants_point_raises_does_not_keep_points_from_the_others():
    class Confused(Sink):
        name, synchronous, events = "confused", True, False

        def wants(self, record):
            raise RuntimeError("cannot tell")

        def wants_point(self, group, name, value):
            raise RuntimeError("cannot tell")

        def emit(self, record):
            raise AssertionError("never asked to emit")

    every = KeepingSink("every")
    p = Pipeline([Confused(), every])
    p.publish_metric("g", "n", 1)
    assert len(every.records) == 1
    assert p.stats()["confused"]["offered"] == 0


def test_a_destination_adds_its_sink_once_and_an_unknown_one_only_warns(caplog):
    from telemetry.pipeline import Destinations

    class Collect(Sink):
        name, synchronous = "collected", True
        made = 0

        def __init__(self):
            Collect.made += 1
            self.got = []

        def emit(self, record):
            self.got.append(record)

    destinations = Destinations({"collect": Collect})
    p = Pipeline([], destinations=destinations)
    with caplog.at_level(logging.WARNING, logger="elastiscope.telemetry"):
        for _ in range(3):
            p.publish(event(), "collect")
            p.publish(event(), "nowhere")
            p.publish(event(), "dynamic_rendezvous")
    assert Collect.made == 1
    assert p.stats()["collected"]["delivered"] == 3
    assert len([r for r in caplog.records if "nowhere" in r.getMessage()]) == 1
