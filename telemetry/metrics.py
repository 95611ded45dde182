"""The metric catalogue: every Prometheus series Elastiscope exports, and how torchelastic's
``put_metric`` names map onto them.

``CATALOGUE`` is the single list of series (name, type, labels, help, when it appears, when
its children start at 0);
``AgentMetrics`` builds them on a private ``CollectorRegistry`` (never the global one, so a host
application's own metrics are untouched); ``classify_metric`` maps one ``put_metric`` name to
the series it updates. Turning events and metric points into updates is the Prometheus sink's
job (``telemetry.sinks.prometheus``); rendering and pushing live at the bottom of this module.

Importing this module imports prometheus_client; ``import telemetry`` does not import it.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

__all__ = [
    "Series",
    "CATALOGUE",
    "WORKER_GROUP_STATES",
    "RESTART_REASONS",
    "EVENT_KINDS_AT_ZERO",
    "restart_reasons",
    "AgentMetrics",
    "MetricTarget",
    "classify_metric",
    "exposition",
    "push",
    "current",
    "set_current",
]

# WorkerState's seven values, as the ``state`` label spells them.
WORKER_GROUP_STATES = ("UNKNOWN", "INIT", "HEALTHY", "UNHEALTHY", "STOPPED", "SUCCEEDED", "FAILED")

# Why the agent restarts its worker group, as the ``reason`` label spells it.
RESTART_REASONS = ("failure", "membership")

# The documented event kinds with a fixed name, and who publishes each: their
# ``elastiscope_events_total`` series exist at 0 from the moment the Prometheus sink is attached,
# so ``increase()`` sees the first one (docs/reference.md's event table lists the same pairs).
EVENT_KINDS_AT_ZERO = (
    ("torchelastic.worker.status.RENDEZVOUS", "AGENT"),
    ("torchelastic.worker.status.ASSIGN_WORKER_RANKS", "AGENT"),
    ("torchelastic.worker.status.START", "WORKER"),
    ("torchelastic.worker.status.SUCCEEDED", "WORKER"),
    ("torchelastic.worker.status.SUCCEEDED", "AGENT"),
    ("torchelastic.worker.status.FAILED", "WORKER"),
    ("torchelastic.worker.status.FAILED", "AGENT"),
    ("torchelastic.worker.status.TERMINATED", "WORKER"),
    ("elastiscope.agent.run_start", "AGENT"),
    ("elastiscope.agent.run_end", "AGENT"),
    ("elastiscope.agent.state_change", "AGENT"),
    ("elastiscope.rendezvous.complete", "AGENT"),
    ("elastiscope.agent.restart", "AGENT"),
    ("elastiscope.worker.failed", "WORKER"),
)

# Bucket bounds in seconds, chosen per step: rank assignment is a store round-trip (ms), a
# rendezvous waits for peers (up to minutes), a restart includes both plus worker start.
_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_RESTART_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


@dataclass(frozen=True)
class Series:
    """One exported series family, as documented in docs/reference.md.

    ``when`` is None for series present in every run, or says what makes them appear (the
    reference test allows a conditional series to be absent from a run). ``zero`` says when a
    counter's or histogram's children are created at 0, before anything is counted, so that
    ``increase()`` and ``rate()`` see the first increment (None: each child appears with its
    first update, because its label values are not known before).
    """

    name: str
    type: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str
    source: str
    when: str | None = None
    buckets: tuple[float, ...] = ()
    zero: str | None = None


_AT_RUN_START_BY_REASON = (
    "at run start: reason failure unless max_restarts is 0, membership unless the rendezvous is static"
)

CATALOGUE: tuple[Series, ...] = (
    Series("elastiscope_agent_info", "gauge", ("run_id", "role", "rdzv_backend", "hostname", "version"),
           "Always 1; identifies the agent's current run.", "elastiscope.agent.run_start"),
    Series("elastiscope_runs_total", "counter", ("role", "outcome", "retried"),
           "Finished runs by outcome (succeeded, failed) and whether restarts were spent (true, false).",
           "put_metric workers.<role>.run_{success,failed}_{with,no}_retries (run_total is their sum)",
           zero="at run start: all four outcome and retried pairs"),
    Series("elastiscope_flakiness_percent", "gauge", ("role",),
           "0 when the last run needed no restart, rising with restarts spent, 100 when it failed.",
           "put_metric workers.<role>.flakiness"),
    Series("elastiscope_remaining_restarts", "gauge", ("role",),
           "Restarts the agent may still spend on failures.",
           "put_metric workers.<role>.remaining_restarts; elastiscope.agent.run_start/restart"),
    Series("elastiscope_max_restarts", "gauge", ("role",),
           "The restart budget the run started with.", "elastiscope.agent.run_start"),
    Series("elastiscope_worker_group_state", "gauge", ("role", "state"),
           "1 for the worker group's current state, 0 for the six others.",
           "elastiscope.agent.state_change; put_metric workers.<role>.<state>"),
    Series("elastiscope_restarts_total", "counter", ("role", "reason"),
           "Worker group restarts by reason (failure, membership).", "elastiscope.agent.restart",
           zero=_AT_RUN_START_BY_REASON),
    Series("elastiscope_worker_failures_total", "counter", ("role", "local_rank", "exit_code", "signal"),
           "Worker process failures seen live by the monitor, by exit code or signal name "
           "(the other label is empty).", "elastiscope.worker.failed",
           when="after a worker failure (local agent)",
           zero=None),  # exit_code and signal are known only when a worker has failed
    Series("elastiscope_failure_detection_seconds", "histogram", ("role",),
           "Time from a worker's exit to the agent noticing it (observed by the local agent).",
           "elastiscope.worker.failed", buckets=_FAST_BUCKETS, zero="at run start"),
    Series("elastiscope_rendezvous_duration_seconds", "histogram", ("role",),
           "Time spent in each rendezvous round.", "torchelastic.worker.status.RENDEZVOUS",
           buckets=_STEP_BUCKETS, zero="at run start"),
    Series("elastiscope_rank_assignment_duration_seconds", "histogram", ("role",),
           "Time spent assigning global and role ranks after a rendezvous.",
           "torchelastic.worker.status.ASSIGN_WORKER_RANKS", buckets=_FAST_BUCKETS, zero="at run start"),
    Series("elastiscope_restart_duration_seconds", "histogram", ("role", "reason"),
           "From a restart decision to the worker group being HEALTHY again.",
           "elastiscope.agent.restart -> elastiscope.agent.state_change HEALTHY",
           buckets=_RESTART_BUCKETS, zero=_AT_RUN_START_BY_REASON),
    Series("elastiscope_worker_start_duration_seconds", "histogram", ("role",),
           "Time the agent's _start_workers took (observed for agents with @prof on it: the "
           "local agent, torch's).", "torch prof metric <Agent>._start_workers.duration.ms",
           buckets=_STEP_BUCKETS, zero="at run start"),
    Series("elastiscope_worker_stop_duration_seconds", "histogram", ("role",),
           "Time the agent's _stop_workers took, before a restart or at the end (observed for "
           "agents with @prof on it).", "torch prof metric <Agent>._stop_workers.duration.ms",
           buckets=_STEP_BUCKETS, zero="at run start"),
    Series("elastiscope_world_size", "gauge", ("role",),
           "Total number of workers (all nodes) after the last rendezvous.", "elastiscope.rendezvous.complete"),
    Series("elastiscope_group_rank", "gauge", ("role",),
           "This node's rank among the agents after the last rendezvous.", "elastiscope.rendezvous.complete"),
    Series("elastiscope_group_world_size", "gauge", ("role",),
           "Number of agents (nodes) after the last rendezvous.", "elastiscope.rendezvous.complete"),
    Series("elastiscope_worker_cpu_seconds_total", "counter", ("role", "local_rank"),
           "CPU time (user+system) used by a worker process; resets when the worker restarts.",
           "put_metric workers.<role>.worker.<local_rank>.cpu_seconds",
           when="agents that sample worker resources (local agent)",
           # Not pre-created: only the agent that samples knows a rank is sampled (a 0 for an
           # agent that never samples would claim no CPU was used). Its first sample comes one
           # monitor interval after the worker starts, with the little CPU used by then.
           zero=None),
    Series("elastiscope_worker_resident_memory_bytes", "gauge", ("role", "local_rank"),
           "Resident memory of a worker process.", "put_metric workers.<role>.worker.<local_rank>.rss_bytes",
           when="agents that sample worker resources (local agent)"),
    Series("elastiscope_events_total", "counter", ("name", "source"),
           "Events published, by event name and source.", "every event",
           zero="at configure: each documented event kind with a fixed name, with its source(s)"),
    Series("elastiscope_telemetry_dropped_total", "counter", ("sink",),
           "Records a sink never received (its queue was full, or exit came first).", "pipeline SinkStats",
           zero="at configure: each configured sink"),
    Series("elastiscope_telemetry_sink_errors_total", "counter", ("sink",),
           "Records whose delivery raised inside a sink.", "pipeline SinkStats",
           zero="at configure: each configured sink"),
    Series("elastiscope_torchelastic_metric", "gauge", ("group", "name"),
           "Last value of any put_metric name not mapped to a series above (torch's prof "
           "metrics such as SimpleElasticAgent._rendezvous.duration.ms, custom names).",
           "any other put_metric name"),
)

_BY_NAME = {s.name: s for s in CATALOGUE}


# -- put_metric names -----------------------------------------------------------------------

@dataclass(frozen=True)
class MetricTarget:
    """Where one put_metric name lands: a ``kind`` of update and the label values it fixes
    (``labels`` starts with the role when the name carries one)."""

    kind: str
    labels: tuple[str, ...] = ()


_RUN_OUTCOMES = {
    "run_success_with_retries": ("succeeded", "true"),
    "run_success_no_retries": ("succeeded", "false"),
    "run_failed_with_retries": ("failed", "true"),
    "run_failed_no_retries": ("failed", "false"),
}
_STATE_SUFFIXES = {s.lower(): s for s in WORKER_GROUP_STATES}
_WORKER_RESOURCE = re.compile(r"^workers\.(?P<role>.+)\.worker\.(?P<rank>\d+)\.(?P<what>cpu_seconds|rss_bytes)$")
_PROF_STEP = re.compile(r"^(?:.+\.)?_(?P<step>start|stop)_workers\.duration\.ms$")


def classify_metric(group: str, name: str) -> MetricTarget:
    """Map one ``put_metric(name, value, group)`` to its series. Pure, so results can be cached."""
    m = _PROF_STEP.match(name)
    if m:
        return MetricTarget("worker_start_duration" if m["step"] == "start" else "worker_stop_duration")
    if name.startswith("workers."):
        m = _WORKER_RESOURCE.match(name)
        if m:
            kind = "worker_cpu" if m["what"] == "cpu_seconds" else "worker_rss"
            return MetricTarget(kind, (m["role"], m["rank"]))
        role, _, suffix = name[len("workers."):].rpartition(".")
        if role:
            if suffix in _RUN_OUTCOMES:
                return MetricTarget("run_outcome", (role, *_RUN_OUTCOMES[suffix]))
            if suffix in ("run_total", "flakiness", "remaining_restarts"):
                return MetricTarget(suffix, (role,))
            if suffix in _STATE_SUFFIXES:
                return MetricTarget("group_state", (role, _STATE_SUFFIXES[suffix]))
    return MetricTarget("generic")


# -- the registry ---------------------------------------------------------------------------

class AgentMetrics:
    """The catalogue's series on a private registry, with cached children for the hot path.

    ``child(series, *labels)`` returns the labelled child, created once; all update methods are
    safe to call from several threads (prometheus_client's children are).
    """

    def __init__(self, stats_source: Callable[[], dict[str, dict[str, int]]] | None = None) -> None:
        self._inner = CollectorRegistry(auto_describe=False)
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        for s in CATALOGUE:
            if s.name in _CUSTOM:
                continue
            if s.type == "counter":
                self._metrics[s.name] = Counter(s.name, s.help, s.labels, registry=self._inner)
            elif s.type == "gauge":
                self._metrics[s.name] = Gauge(s.name, s.help, s.labels, registry=self._inner)
            else:
                self._metrics[s.name] = Histogram(
                    s.name, s.help, s.labels, buckets=s.buckets, registry=self._inner
                )
        self._children: dict[tuple, object] = {}
        self._children_lock = threading.Lock()
        # Cumulative values that arrive as totals (CPU seconds): exposed as counters by a collector.
        self.worker_cpu_seconds: dict[tuple[str, str], float] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_WithoutCreated(self._inner))
        self.registry.register(_CumulativeCounters(self))
        self.registry.register(_SinkHealth(stats_source or _current_pipeline_stats))

    def child(self, series: str, *labels: str):
        key = (series, labels)
        try:
            return self._children[key]
        except KeyError:
            pass
        metric = self._metrics[series]
        c = metric.labels(*labels) if labels else metric
        with self._children_lock:
            return self._children.setdefault(key, c)

    def remove_all(self, series: str) -> None:
        """Forget every child of ``series`` (the info series keeps only the current run)."""
        self._metrics[series].clear()
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
        for series in _ROLE_HISTOGRAMS:
            self.child(series, role)
        for outcome, retried in _RUN_OUTCOMES.values():
            self.child("elastiscope_runs_total", role, outcome, retried)
        for reason in restart_reasons(max_restarts, rdzv_backend):
            self.child("elastiscope_restarts_total", role, reason)
            self.child("elastiscope_restart_duration_seconds", role, reason)

    def count_events_from_zero(self, kinds: Iterable[tuple[str, str]] = EVENT_KINDS_AT_ZERO) -> None:
        """Create ``elastiscope_events_total{name, source}`` at 0 for each (name, source)."""
        for name, source in kinds:
            self.child("elastiscope_events_total", name, source)

    def set_group_state(self, role: str, state: str) -> None:
        for s in WORKER_GROUP_STATES:
            self.child("elastiscope_worker_group_state", role, s).set(1 if s == state else 0)

    def set_worker_cpu(self, role: str, local_rank: str, seconds: float) -> None:
        self.worker_cpu_seconds[(role, local_rank)] = float(seconds)

    def series_names(self) -> list[str]:
        return [s.name for s in CATALOGUE]


def restart_reasons(max_restarts: float | None = None, rdzv_backend: str | None = None) -> tuple[str, ...]:
    """The restart reasons a run can see: no failure restart without a restart budget, no
    membership restart with the static rendezvous (its membership is fixed)."""
    reasons = []
    if max_restarts is None or max_restarts > 0:
        reasons.append("failure")
    if rdzv_backend != "static":
        reasons.append("membership")
    return tuple(reasons)


# Histograms labelled by role alone: created at 0 when the run's role is known.
_ROLE_HISTOGRAMS = tuple(s.name for s in CATALOGUE if s.type == "histogram" and s.labels == ("role",))

_CUSTOM = {
    "elastiscope_worker_cpu_seconds_total",
    "elastiscope_telemetry_dropped_total",
    "elastiscope_telemetry_sink_errors_total",
}


def _counter_family(name: str) -> CounterMetricFamily:
    s = _BY_NAME[name]
    return CounterMetricFamily(name, s.help, labels=s.labels)


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


class _CumulativeCounters:
    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        family = _counter_family("elastiscope_worker_cpu_seconds_total")
        for (role, rank), value in sorted(self._metrics.worker_cpu_seconds.items()):
            family.add_metric([role, rank], value)
        yield family


class _SinkHealth:
    """Telemetry's own health, read from the pipeline's SinkStats at scrape time."""

    def __init__(self, stats_source: Callable[[], dict[str, dict[str, int]]]) -> None:
        self._stats_source = stats_source

    def collect(self) -> Iterator[Metric]:
        dropped = _counter_family("elastiscope_telemetry_dropped_total")
        errors = _counter_family("elastiscope_telemetry_sink_errors_total")
        try:
            stats = self._stats_source()
        except Exception:
            stats = {}
        for sink, s in sorted(stats.items()):
            dropped.add_metric([sink], s.get("dropped", 0))
            errors.add_metric([sink], s.get("errors", 0))
        yield dropped
        yield errors


def _current_pipeline_stats() -> dict[str, dict[str, int]]:
    from telemetry.pipeline import get_pipeline

    return get_pipeline().stats()


# -- the process's current metrics, exposition and push --------------------------------------

_current: AgentMetrics | None = None


def current() -> AgentMetrics:
    """The metrics the configured Prometheus sink updates (an empty set before ``configure``)."""
    global _current
    if _current is None:
        _current = AgentMetrics()
    return _current


def set_current(metrics: AgentMetrics | None) -> None:
    global _current
    _current = metrics


def exposition(accept_header: str | None = None) -> tuple[bytes, str]:
    """Render the registry: OpenMetrics if ``accept_header`` asks for it, else Prometheus text.

    Returns (body, content type) for an HTTP response.
    """
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(current().registry), content_type


def push(url: str, job: str = "elastiscope", grouping_key: dict[str, str] | None = None,
         timeout: float = 5.0) -> None:
    """Replace this job's metrics on a Prometheus pushgateway. Raises on failure."""
    from prometheus_client import push_to_gateway

    push_to_gateway(url, job=job, registry=current().registry, grouping_key=grouping_key or {},
                    timeout=timeout)


def reference_rows(series: Iterable[Series] = CATALOGUE) -> list[str]:
    """The catalogue as markdown table rows (how docs/reference.md's table was produced)."""
    rows = []
    for s in series:
        labels = ", ".join(s.labels)
        when = s.when and f"conditional: {s.when}" or "always"
        sources = "; ".join(f"`{part.strip()}`" for part in s.source.split(";"))
        rows.append(f"| `{s.name}` | {s.type} | {labels} | {s.help} | {sources} | {zero_cell(s)} | {when} |")
    return rows


def zero_cell(s: Series) -> str:
    """docs/reference.md's *Starts at 0* cell for ``s``."""
    if s.type == "gauge":
        return "n/a (gauge)"
    return s.zero or "no: created by its first update"
