"""The Prometheus sink skips gauge points that would set what is already set, and only those.

The agent's run loop re-publishes the same few values ten times a second; the sink applies a
gauge point only when it changes the series. A skipping sink must leave every series exactly
as a sink that applies every point would.
"""

from __future__ import annotations

import random
import threading

from prometheus_client import generate_latest

from telemetry import Event, EventSource, MetricPoint
from telemetry.sinks.prometheus import PrometheusSink


def point(name, value, group="torchelastic"):
    return MetricPoint(0.0, group, name, value)


def no_stats():
    return {}


def count_sets(child, calls):
    """Replace ``child.set`` with one that records each value set, then sets it."""
    real_set = child.set

    def counting_set(value):
        calls.append(value)
        real_set(value)

    child.set = counting_set


def state_change(state):
    return Event("elastiscope.agent.state_change", EventSource.AGENT, 1,
                 {"role": "r", "state": state, "previous_state": "INIT"})


def test_the_sink_exposes_the_registry_of_its_own_metrics():
    sink = PrometheusSink(role="r", stats_source=no_stats)
    sink.emit(point("workers.r.flakiness", 25))
    assert sink.registry is sink.metrics.registry
    assert sink.registry.get_sample_value("elastiscope_flakiness_percent", {"role": "r"}) == 25


def test_the_telemetry_health_series_read_the_stats_source_handed_in():
    stats = {"jsonl": {"offered": 3, "delivered": 1, "dropped": 2, "errors": 0}}
    sink = PrometheusSink(stats_source=lambda: stats)
    assert sink.registry.get_sample_value("elastiscope_telemetry_dropped_total", {"sink": "jsonl"}) == 2


def test_a_repeated_gauge_point_is_applied_once():
    sink = PrometheusSink(role="r", stats_source=no_stats)
    calls = []
    count_sets(sink.metrics.child("elastiscope_remaining_restarts", "r"), calls)
    for value in (3, 3, 3, 2, 2, 3):
        sink.emit(point("workers.r.remaining_restarts", value))
    assert calls == [3.0, 2.0, 3.0]


def test_counters_and_histograms_count_every_repeated_point():
    sink = PrometheusSink(role="r", stats_source=no_stats)
    for _ in range(3):
        sink.emit(point("workers.r.run_success_no_retries", 1))
        sink.emit(point("LocalElasticAgent._start_workers.duration.ms", 5))
        sink.emit(point("workers.r.worker.0.cpu_seconds", 1.5))
    registry = sink.registry
    assert registry.get_sample_value(
        "elastiscope_runs_total", {"role": "r", "outcome": "succeeded", "retried": "false"}) == 3
    assert registry.get_sample_value("elastiscope_worker_start_duration_seconds_count", {"role": "r"}) == 3
    assert registry.get_sample_value(
        "elastiscope_worker_cpu_seconds_total", {"role": "r", "local_rank": "0"}) == 1.5


def test_an_event_that_sets_the_same_gauge_is_not_mistaken_for_a_repeat():
    sink = PrometheusSink(role="r", stats_source=no_stats)
    sink.emit(point("workers.r.remaining_restarts", 2))
    sink.emit(Event("elastiscope.agent.restart", EventSource.AGENT, 1,
                    {"role": "r", "reason": "failure", "remaining_restarts": 1}))
    sink.emit(point("workers.r.remaining_restarts", 2))
    assert sink.registry.get_sample_value("elastiscope_remaining_restarts", {"role": "r"}) == 2
    sink.emit(state_change("FAILED"))
    sink.emit(point("workers.r.healthy", 1))
    sink.emit(state_change("FAILED"))
    sink.emit(point("workers.r.healthy", 1))
    assert sink.registry.get_sample_value(
        "elastiscope_worker_group_state", {"role": "r", "state": "HEALTHY"}) == 1


def test_a_change_of_sign_of_zero_is_not_a_repeat():
    sink = PrometheusSink(stats_source=no_stats)
    sink.emit(point("g.zero", 0.0))
    sink.emit(point("g.zero", -0.0))
    assert b'name="g.zero"} -0.0' in generate_latest(sink.registry)


def test_a_value_that_cannot_be_compared_or_converted_raises_as_without_skipping():
    class Array:  # like a numpy array: == answers element-wise, and float() refuses it
        def __eq__(self, other):
            raise ValueError("truth value of an array is ambiguous")

        def __float__(self):
            raise TypeError("only size-1 arrays can be converted")

    for skip_repeats in (True, False):
        sink = PrometheusSink(stats_source=no_stats, skip_repeats=skip_repeats)
        for _ in range(2):
            try:
                sink.emit(point("custom.array", Array()))
            except TypeError:
                pass
            else:
                raise AssertionError("a value Gauge.set refuses must raise")


def test_a_point_set_during_another_threads_set_leaves_series_and_memory_agreeing():
    """Thread a is inside the child's set (value applied, not yet remembered); thread b sets
    another value. Unguarded, b's value lands and is remembered first, then a's is remembered
    last: a later repeat of a's value would be skipped on a series that holds b's."""
    sink = PrometheusSink(role="r", stats_source=no_stats)
    child = sink.metrics.child("elastiscope_remaining_restarts", "r")
    real_set = child.set
    inside, gate = threading.Event(), threading.Event()

    def slow_first_set(value):
        real_set(value)
        if value == 1 and not gate.is_set():
            inside.set()
            gate.wait(10)

    child.set = slow_first_set
    a = threading.Thread(target=sink.emit, args=(point("workers.r.remaining_restarts", 1),))
    a.start()
    assert inside.wait(10)
    b = threading.Thread(target=sink.emit, args=(point("workers.r.remaining_restarts", 2),))
    b.start()
    b.join(1.0)  # room for an unguarded b to finish; a guarded b waits for a's set to end
    gate.set()
    a.join(10)
    b.join(10)
    sink.emit(point("workers.r.remaining_restarts", 1))
    assert sink.registry.get_sample_value("elastiscope_remaining_restarts", {"role": "r"}) == 1


def run_loop_records(seed: int, count: int) -> list:
    """The per-pass metrics of the run loop, interleaved with state changes, restarts, run
    starts and outcomes, the kinds of records that touch the same series."""
    rng = random.Random(seed)
    records = [Event("elastiscope.agent.run_start", EventSource.AGENT, 1,
                     {"role": "r", "run_id": "x", "max_restarts": 3, "rdzv_backend": "c10d"})]
    for _ in range(count):
        kind = rng.random()
        if kind < 0.02:
            records.append(state_change(rng.choice(["HEALTHY", "FAILED", "UNHEALTHY"])))
        elif kind < 0.03:
            records.append(Event("elastiscope.agent.restart", EventSource.AGENT, 2,
                                 {"role": "r", "reason": "failure", "remaining_restarts": rng.choice([3, 2])}))
        elif kind < 0.035:
            records.append(Event("elastiscope.agent.run_start", EventSource.AGENT, 3,
                                 {"role": "r", "run_id": "y", "max_restarts": rng.choice([2, 3])}))
        elif kind < 0.05:
            records.append(point("workers.r.run_success_no_retries", 1))
        elif kind < 0.07:
            records.append(point("LocalElasticAgent._start_workers.duration.ms", rng.choice([5, 7])))
        else:
            records.append(point(*rng.choice([
                ("workers.r.remaining_restarts", rng.choice([3, 2])),
                ("workers.r.healthy", 1), ("workers.r.failed", 1), ("workers.r.unhealthy", 0),
                ("workers.r.flakiness", rng.choice([0, 50])),
                ("workers.r.worker.0.rss_bytes", rng.choice([1e6, 2e6])),
                ("workers.r.worker.0.cpu_seconds", rng.choice([1.0, 2.0])),
                ("LocalElasticAgent._monitor_workers.success", 1),
                ("LocalElasticAgent._monitor_workers.duration.ms", rng.choice([0, 0, 1, -0.0])),
            ])))
    return records


def test_prometheus_output_is_the_same_with_and_without_skipping_repeats():
    plain = PrometheusSink(role="r", stats_source=no_stats, skip_repeats=False)
    skipping = PrometheusSink(role="r", stats_source=no_stats)
    sets = []
    count_sets(skipping.metrics.child("elastiscope_remaining_restarts", "r"), sets)
    records = run_loop_records(seed=3, count=1000)
    for i, record in enumerate(records):
        plain.emit(record)
        skipping.emit(record)
        assert generate_latest(skipping.registry) == generate_latest(plain.registry), (i, record)
    remaining_points = sum(1 for r in records if isinstance(r, MetricPoint) and r.name.endswith("remaining_restarts"))
    assert 0 < len(sets) < remaining_points  # some repeats were skipped, not applied


def test_through_a_pipeline_the_sink_declines_repeats_and_shows_the_same_as_without_skipping():
    """The pipeline asks ``wants`` first: a repeat never reaches the delivery or the sink."""
    from telemetry.pipeline import Pipeline

    plain = PrometheusSink(role="r", stats_source=no_stats, skip_repeats=False)
    skipping = PrometheusSink(role="r", stats_source=no_stats)
    plain_pipeline, skipping_pipeline = Pipeline([plain]), Pipeline([skipping])
    records = run_loop_records(seed=5, count=1000)
    for i, record in enumerate(records):
        plain_pipeline.publish(record)
        skipping_pipeline.publish(record)
        assert generate_latest(skipping.registry) == generate_latest(plain.registry), (i, record)
    offered = skipping_pipeline.stats()["prometheus"]["offered"]
    assert offered < plain_pipeline.stats()["prometheus"]["offered"] == len(records)


def test_points_published_by_their_fields_show_the_same_as_without_skipping():
    """``publish_metric`` asks ``wants_point`` before any record is built: the same series as
    a sink that applies every point, and ``wants_point`` agrees with ``wants`` at every step."""
    from telemetry.pipeline import Pipeline

    plain = PrometheusSink(role="r", stats_source=no_stats, skip_repeats=False)
    skipping = PrometheusSink(role="r", stats_source=no_stats)
    plain_pipeline, skipping_pipeline = Pipeline([plain]), Pipeline([skipping])
    records = run_loop_records(seed=7, count=1000)
    points = 0
    for i, record in enumerate(records):
        if isinstance(record, MetricPoint):
            points += 1
            fields = (record.group_name, record.name, record.value)
            assert skipping.wants_point(*fields) == skipping.wants(record), (i, record)
            plain_pipeline.publish_metric(*fields)
            skipping_pipeline.publish_metric(*fields)
        else:
            plain_pipeline.publish(record)
            skipping_pipeline.publish(record)
        assert generate_latest(skipping.registry) == generate_latest(plain.registry), (i, record)
    offered = skipping_pipeline.stats()["prometheus"]["offered"]
    assert offered < plain_pipeline.stats()["prometheus"]["offered"] == len(records)
    assert points > 500
