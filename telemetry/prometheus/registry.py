"""The catalogue's series on a private CollectorRegistry, with cached children for the hot path.

Never prometheus_client's global registry: a host application's own metrics stay untouched.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from telemetry import names, state
from telemetry.prometheus.catalogue import (
    CATALOGUE,
    EVENT_KINDS_AT_ZERO,
    ROLE_HISTOGRAMS,
    RUN_OUTCOMES,
    Series,
    restart_reasons,
    series_named,
)

__all__ = ["AgentMetrics", "StatsSource"]

# Per-sink counters of a pipeline: {sink name: {"dropped": n, "errors": n, ...}}.
StatsSource = Callable[[], "dict[str, dict[str, int]]"]

# Series whose values a collector produces at scrape time instead of a prometheus_client metric.
_COLLECTED = frozenset({
    "elastiscope_worker_cpu_seconds_total",
    "elastiscope_worker_steps_total",
    "elastiscope_worker_step_duration_seconds",
    "elastiscope_telemetry_dropped_total",
    "elastiscope_telemetry_sink_errors_total",
    "elastiscope_productive_seconds_total",
    "elastiscope_badput_seconds_total",
})


class AgentMetrics:
    """The catalogue's series, ready to update; ``registry`` is what /metrics renders.

    ``child(series, *labels)`` returns the labelled child, created once; every method is safe
    to call from several threads (prometheus_client's children are). ``stats_source`` gives
    the pipeline's per-sink counters for the telemetry-health series, read at scrape time.
    """

    def __init__(self, stats_source: StatsSource | None = None) -> None:
        self._updated = CollectorRegistry(auto_describe=False)
        self._families = {s.name: _family(s, self._updated) for s in CATALOGUE if s.name not in _COLLECTED}
        self._children: dict[tuple, object] = {}
        self._children_lock = threading.Lock()
        self._worker_cpu = _WorkerCpuTotals()
        self._worker_steps = _WorkerCpuTotals("elastiscope_worker_steps_total")
        self._step_durations = _StepDurations()
        self._productive = _WorkerCpuTotals("elastiscope_productive_seconds_total")
        self._badput = _WorkerCpuTotals("elastiscope_badput_seconds_total")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_WithoutCreated(self._updated))
        self.registry.register(self._worker_cpu)
        self.registry.register(self._worker_steps)
        self.registry.register(self._step_durations)
        self.registry.register(self._productive)
        self.registry.register(self._badput)
        self.registry.register(_SinkHealth(stats_source or _process_pipeline_stats))

    def child(self, series: str, *labels: str):
        key = (series, labels)
        try:
            return self._children[key]
        except KeyError:
            pass
        family = self._families[series]
        created = family.labels(*labels) if labels else family
        with self._children_lock:
            return self._children.setdefault(key, created)

    def remove_all(self, series: str) -> None:
        """Forget every child of ``series`` (the info series keeps only the current run)."""
        self._families[series].clear()
        with self._children_lock:
            for key in [k for k in self._children if k[0] == series]:
                del self._children[key]

    # -- children at 0 ---------------------------------------------------------------------
    # Standard Prometheus practice ("avoid missing metrics"): a counter or histogram child that
    # first appears already holding its first event defeats increase() and rate(), which need
    # an earlier sample. Every child whose label values are known before anything happens is
    # created at 0 as soon as they are known; ``Series.zero`` documents which and when.

    def start_run(self, role: str, max_restarts: float | None = None,
                  rdzv_backend: str | None = None) -> None:
        """Create at 0 the children of ``role`` that this run may count (idempotent: a child
        that exists keeps its value). ``max_restarts`` and ``rdzv_backend`` rule out the
        restart reasons that cannot happen (None: unknown, so possible)."""
        for series in ROLE_HISTOGRAMS:
            self.child(series, role)
        for outcome, retried in RUN_OUTCOMES:
            self.child("elastiscope_runs_total", role, outcome, retried)
        for reason in restart_reasons(max_restarts, rdzv_backend):
            self.child("elastiscope_restarts_total", role, reason)
            self.child("elastiscope_restart_duration_seconds", role, reason)
        # A run that has spent no restart is 0 flaky; torch reports its flakiness only at the
        # end, and the last scrape before the agent exits may come too early to see it.
        self.child("elastiscope_flakiness_percent", role)
        self._productive.start((role,))
        for reason in names.BADPUT_REASONS:
            self._badput.start((role, reason))
        self.child("elastiscope_stalls_total", role)

    def count_events_from_zero(self, kinds: Iterable[tuple[str, str]] = EVENT_KINDS_AT_ZERO) -> None:
        """Create ``elastiscope_events_total{name, source}`` at 0 for each (name, source)."""
        for name, source in kinds:
            self.child("elastiscope_events_total", name, source)

    def set_group_state(self, role: str, state: str) -> None:
        for s in names.WORKER_STATES:
            self.child("elastiscope_worker_group_state", role, s).set(1 if s == state else 0)

    def set_worker_cpu(self, role: str, local_rank: str, seconds: float) -> None:
        self._worker_cpu.set(role, local_rank, seconds)

    def set_worker_steps(self, role: str, local_rank: str, steps: float) -> None:
        self._worker_steps.set(role, local_rank, steps)

    def set_goodput_seconds(self, role: str, reason: str | None, seconds: float) -> None:
        """The run's productive seconds so far (``reason`` None) or its badput for ``reason``."""
        if reason is None:
            self._productive.set_labels((role,), seconds)
        else:
            self._badput.set_labels((role, reason), seconds)

    def set_step_duration_bucket(self, role: str, local_rank: str, bucket: int, count: float) -> None:
        """The steps counted in bucket ``bucket`` (not cumulative; the last is +Inf)."""
        self._step_durations.set_bucket(role, local_rank, bucket, count)

    def set_step_duration_sum(self, role: str, local_rank: str, seconds: float) -> None:
        self._step_durations.set_sum(role, local_rank, seconds)


def _family(series: Series, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
    if series.type == "counter":
        return Counter(series.name, series.help, series.labels, registry=registry)
    if series.type == "gauge":
        return Gauge(series.name, series.help, series.labels, registry=registry)
    return Histogram(series.name, series.help, series.labels, buckets=series.buckets, registry=registry)


def _counter_family(name: str) -> CounterMetricFamily:
    s = series_named(name)
    return CounterMetricFamily(name, s.help, labels=s.labels)


def _process_pipeline_stats() -> dict[str, dict[str, int]]:
    # For metrics built without a stats source (a PrometheusSink a caller made and attached
    # through configure(extra_sinks=...)): the pipeline the process publishes into.
    return state.get_pipeline().stats()


class _WithoutCreated:
    """Hides prometheus_client's ``*_created`` samples from our registry only.

    They double the series count for little use, and the switch to turn them off
    (``disable_created_metrics``) is process-global, which would reach into the host
    application's own registries.
    """

    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            samples = [s for s in family.samples if not s.name.endswith("_created")]
            if len(samples) != len(family.samples):
                family.samples = samples
            yield family


class _WorkerCpuTotals:
    """Worker CPU seconds (or steps, or goodput seconds) arrive as running totals, not
    increments: kept as given and exposed as a counter at scrape time (a prometheus_client
    Counter can only be increased)."""

    def __init__(self, series: str = "elastiscope_worker_cpu_seconds_total") -> None:
        self._series = series
        self._totals: dict[tuple[str, ...], float] = {}

    def set(self, role: str, local_rank: str, seconds: float) -> None:
        self._totals[(role, local_rank)] = float(seconds)

    def set_labels(self, labels: tuple[str, ...], value: float) -> None:
        self._totals[labels] = float(value)

    def start(self, labels: tuple[str, ...]) -> None:
        """At 0 unless it holds a value already."""
        self._totals.setdefault(labels, 0.0)

    def collect(self) -> Iterator[Metric]:
        family = _counter_family(self._series)
        # dict.copy() is atomic: a sample arriving from the monitor thread mid-scrape is safe.
        for labels, value in sorted(self._totals.copy().items()):
            family.add_metric(list(labels), value)
        yield family


class _StepDurations:
    """A worker's step durations arrive as per-bucket totals counted by the worker (every step,
    however rarely the agent reads): exposed as a histogram at scrape time."""

    def __init__(self) -> None:
        self._series = series_named("elastiscope_worker_step_duration_seconds")
        self._counts: dict[tuple[str, str], list[float]] = {}
        self._sums: dict[tuple[str, str], float] = {}

    def _row(self, key: tuple[str, str]) -> list[float]:
        row = self._counts.get(key)
        if row is None:
            row = self._counts[key] = [0.0] * (len(self._series.buckets) + 1)
        return row

    def set_bucket(self, role: str, local_rank: str, bucket: int, count: float) -> None:
        row = self._row((role, local_rank))
        if 0 <= bucket < len(row):
            row[bucket] = float(count)

    def set_sum(self, role: str, local_rank: str, seconds: float) -> None:
        self._row((role, local_rank))
        self._sums[(role, local_rank)] = float(seconds)

    def collect(self) -> Iterator[Metric]:
        s = self._series
        family = HistogramMetricFamily(s.name, s.help, labels=s.labels)
        bounds = [*(repr(float(b)) for b in s.buckets), "+Inf"]
        for key, row in sorted(self._counts.copy().items()):
            cumulative, running = [], 0.0
            for bound, n in zip(bounds, list(row)):
                running += n
                cumulative.append((bound, running))
            family.add_metric(list(key), cumulative, self._sums.get(key, 0.0))
        yield family


class _SinkHealth:
    """Telemetry's own health, read from the pipeline's SinkStats at scrape time."""

    def __init__(self, stats_source: StatsSource) -> None:
        self._stats_source = stats_source

    def collect(self) -> Iterator[Metric]:
        dropped = _counter_family("elastiscope_telemetry_dropped_total")
        errors = _counter_family("elastiscope_telemetry_sink_errors_total")
        try:
            stats = self._stats_source()
        except Exception:  # a scrape must not fail because the pipeline is mid-shutdown
            stats = {}
        for sink, s in sorted(stats.items()):
            dropped.add_metric([sink], s.get("dropped", 0))
            errors.add_metric([sink], s.get("errors", 0))
        yield dropped
        yield errors
