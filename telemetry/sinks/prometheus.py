"""Prometheus sink: turns events and put_metric points into updates of the catalogue's series.

Synchronous (an update is a dict lookup and a locked add), so /metrics is current the moment
a record is published. Each sink owns its series (``metrics``, an AgentMetrics) and exposes the
registry to render or push as ``registry``. The mapping of each input to its series is
documented in docs/reference.md and defined by ``telemetry.prometheus.catalogue`` and
``telemetry.prometheus.classify``.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

from prometheus_client import CollectorRegistry

from telemetry import names
from telemetry.prometheus.classify import MetricKind, MetricTarget, classify_metric
from telemetry.prometheus.registry import AgentMetrics, StatsSource
from telemetry.records import Event, MetricPoint
from telemetry.sink import Sink

__all__ = ["PrometheusSink"]

_GROUP_STATE = "elastiscope_worker_group_state"
# The gauge each kind of put_metric point sets (its labels are the point's target labels, or
# (group, name) for the generic series). Kinds not listed add to counters or histograms.
_GAUGE_OF_KIND = {
    MetricKind.GENERIC: "elastiscope_torchelastic_metric",
    MetricKind.REMAINING_RESTARTS: "elastiscope_remaining_restarts",
    MetricKind.FLAKINESS: "elastiscope_flakiness_percent",
    MetricKind.WORKER_RSS: "elastiscope_worker_resident_memory_bytes",
    MetricKind.GROUP_STATE: _GROUP_STATE,
}


def _label(value: object) -> str:
    return "" if value is None else str(value)


def _is_repeat(last: object, value: object) -> bool:
    """Setting ``value`` again after ``last`` changes nothing a scrape shows.

    0.0 and -0.0 are equal yet render differently, so a change of sign is not a repeat.
    """
    return last == value and (value != 0.0 or math.copysign(1.0, value) == math.copysign(1.0, last))


class PrometheusSink(Sink):
    """Updates its own ``metrics`` from every record; ``registry`` is what /metrics renders.

    ``metrics`` may be handed in (tests, or to share series); otherwise the sink builds its
    own, whose telemetry-health series read ``stats_source`` (default: the process pipeline's
    stats). ``role`` labels torch's prof metrics until a run_start names the run's role.
    ``skip_repeats=False`` applies every point, as a reference to compare the skipping with.
    """

    name = "prometheus"
    synchronous = True

    def __init__(self, metrics: AgentMetrics | None = None, role: str | None = None,
                 stats_source: StatsSource | None = None, skip_repeats: bool = True) -> None:
        self.metrics = metrics or AgentMetrics(stats_source)
        # prof metrics carry no role; they take the role of the run in progress.
        self.role = role or ""
        self._targets: dict[tuple[str, str], MetricTarget] = {}
        # (group, name) -> the key of the gauge child the point sets, None if it sets none.
        self._gauge_keys: dict[tuple[str, str], tuple | None] = {}
        self._event_counters: dict[tuple[str, str], object] = {}
        self._restart_started: dict[str, tuple[int, str]] = {}
        self._restart_lock = threading.Lock()
        # The last value set on each gauge child, so that a repeat is not applied again: the
        # agent's run loop re-publishes the same few values ten times a second. Checking and
        # setting happen under one lock, or two threads could leave the memory disagreeing
        # with the child. Reentrant: a signal handler that publishes may interrupt a set.
        self._last_set: dict[tuple, object] = {}
        self._skip_repeats = skip_repeats
        self._set_lock = threading.RLock()
        self._on_event: dict[str, Callable[[Event], None]] = {
            names.RUN_START: self._run_start,
            names.STATE_CHANGE: self._state_change,
            names.RESTART: self._restart,
            names.RENDEZVOUS_COMPLETE: self._rendezvous_complete,
            names.WORKER_FAILED: self._worker_failed,
            names.WORKER_STALLED: self._worker_stalled,
            names.TORCH_RENDEZVOUS: self._rendezvous_duration,
            names.TORCH_ASSIGN_WORKER_RANKS: self._rank_assignment_duration,
        }
        self._on_metric: dict[MetricKind, Callable[[MetricPoint, tuple[str, ...]], None]] = {
            MetricKind.GENERIC: self._generic,
            MetricKind.REMAINING_RESTARTS: self._remaining_restarts,
            MetricKind.GROUP_STATE: self._group_state,
            MetricKind.RUN_OUTCOME: self._run_outcome,
            MetricKind.RUN_TOTAL: self._run_total,
            MetricKind.FLAKINESS: self._flakiness,
            MetricKind.WORKER_CPU: self._worker_cpu,
            MetricKind.WORKER_RSS: self._worker_rss,
            MetricKind.WORKER_START_DURATION: self._worker_start_duration,
            MetricKind.WORKER_STOP_DURATION: self._worker_stop_duration,
            MetricKind.WORKER_PROGRESS: self._worker_progress,
            MetricKind.NODE_STEP_RATE: self._node_step_rate,
            MetricKind.GOODPUT: self._goodput,
        }
        # Children whose label values are known now start at 0 (the role's, at run start).
        self.metrics.count_events_from_zero()

    @property
    def registry(self) -> CollectorRegistry:
        """The registry to render for /metrics or push: every series, telemetry health included."""
        return self.metrics.registry

    def emit(self, record: Event | MetricPoint) -> None:
        if type(record) is MetricPoint:
            target = self._target(record)
            self._on_metric[target.kind](record, target.labels)
        else:
            self._event(record)

    # -- setting gauges, skipping repeats ----------------------------------------------------
    def wants(self, record: object) -> bool:
        """Every event; a metric point unless it would set a gauge to the value it holds
        (``wants_point``)."""
        if type(record) is not MetricPoint:
            return True
        return self.wants_point(record.group_name, record.name, record.value)

    def wants_point(self, group: str, name: str, value: object) -> bool:
        """A metric point unless it would set a gauge to the value it holds.

        The agent's run loop re-publishes the same few values ten times a second; declining
        them here spares the pipeline the record and this sink's dispatch on the agent's
        thread. Deciding on one read of the last value set is safe under concurrent
        publishers: the point is skipped only at a moment when applying it would change
        nothing, so it is as if it had been applied then. ``emit`` checks again under its lock.
        """
        if not self._skip_repeats:
            return True
        ident = (group, name)
        try:
            key = self._gauge_keys[ident]
        except KeyError:
            key = self._gauge_keys[ident] = self._gauge_key(group, name)
        if key is None:
            return True
        last = self._last_set.get(key)
        if last is None:
            return True
        if key[0] == _GROUP_STATE:
            # torch publishes 1 for the state entered and 0 for nothing: only a 1 for another
            # state changes anything.
            return bool(value) and self._targets[ident].labels[1] != last
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return True  # emit raises for it as Gauge.set would, and counts the error
        # _is_repeat, inlined: this runs for nearly every point the agent publishes.
        if number != last:
            return True
        return number == 0.0 and math.copysign(1.0, number) != math.copysign(1.0, last)

    def _gauge_key(self, group: str, name: str) -> tuple | None:
        target = self._target_of(group, name)
        series = _GAUGE_OF_KIND.get(target.kind)
        if series is None:
            return None
        if target.kind is MetricKind.GENERIC:
            return (series, (group, name))
        if target.kind is MetricKind.GROUP_STATE:
            return (series, target.labels[:1])
        return (series, target.labels)

    # Every set of a gauge that a put_metric point can also set goes through here, events'
    # included, so the memory always holds what the child shows. Counters and histograms add
    # on every point and are never skipped.

    def _set_gauge(self, series: str, labels: tuple[str, ...], value: object) -> None:
        key = (series, labels)
        try:
            number = float(value)  # what Gauge.set stores
        except (TypeError, ValueError):
            number = None
        with self._set_lock:
            # A repeat is known to have a child already (it was set): skip before looking it up.
            if number is not None and _is_repeat(self._last_set.get(key), number):
                return
            child = self.metrics.child(series, *labels)
            if number is None:
                number = float(value)  # raises as Gauge.set would, with the child created
            child.set(number)
            if self._skip_repeats:
                self._last_set[key] = number

    def _set_group_state(self, role: str, state: str) -> None:
        key = (_GROUP_STATE, (role,))
        with self._set_lock:
            if self._last_set.get(key) == state:
                return
            self.metrics.set_group_state(role, state)
            if self._skip_repeats:
                self._last_set[key] = state

    # -- events ---------------------------------------------------------------------------
    def _event(self, event: Event) -> None:
        source = getattr(event.source, "value", event.source)
        key = (event.name, source)
        counter = self._event_counters.get(key)
        if counter is None:
            counter = self.metrics.child("elastiscope_events_total", event.name, str(source))
            self._event_counters[key] = counter
        counter.inc()
        handler = self._on_event.get(event.name)
        if handler is not None:
            handler(event)

    def _role(self, md: dict) -> str:
        return _label(md.get("role", self.role))

    def _run_start(self, event: Event) -> None:
        md = event.metadata
        m = self.metrics
        role = self.role = self._role(md)
        m.remove_all("elastiscope_agent_info")
        m.child(
            "elastiscope_agent_info",
            _label(md.get("run_id")), role, _label(md.get("rdzv_backend")),
            _label(md.get("hostname")), _label(md.get("version")),
        ).set(1)
        max_restarts = md.get("max_restarts")
        if isinstance(max_restarts, (int, float)):
            self._set_gauge("elastiscope_max_restarts", (role,), max_restarts)
            self._set_gauge("elastiscope_remaining_restarts", (role,), max_restarts)
        else:
            max_restarts = None
        backend = md.get("rdzv_backend")
        m.start_run(role, max_restarts, backend if isinstance(backend, str) else None)

    def _state_change(self, event: Event) -> None:
        md = event.metadata
        role, state = self._role(md), _label(md.get("state"))
        self._set_group_state(role, state)
        if state == names.HEALTHY:
            with self._restart_lock:
                started = self._restart_started.pop(role, None)
            if started is not None:
                ts, reason = started
                seconds = max(0.0, (event.timestamp - ts) / 1000.0)
                self.metrics.child("elastiscope_restart_duration_seconds", role, reason).observe(seconds)

    def _restart(self, event: Event) -> None:
        md = event.metadata
        role, reason = self._role(md), _label(md.get("reason"))
        self.metrics.child("elastiscope_restarts_total", role, reason).inc()
        remaining = md.get("remaining_restarts")
        if isinstance(remaining, (int, float)):
            self._set_gauge("elastiscope_remaining_restarts", (role,), remaining)
        with self._restart_lock:
            self._restart_started[role] = (event.timestamp, reason)

    def _rendezvous_complete(self, event: Event) -> None:
        md = event.metadata
        role = self._role(md)
        for series, key in (
            ("elastiscope_world_size", "world_size"),
            ("elastiscope_group_rank", "group_rank"),
            ("elastiscope_group_world_size", "group_world_size"),
        ):
            value = md.get(key)
            if isinstance(value, (int, float)):
                self._set_gauge(series, (role,), value)

    def _worker_failed(self, event: Event) -> None:
        md = event.metadata
        role = self._role(md)
        self.metrics.child(
            "elastiscope_worker_failures_total",
            role, _label(md.get("local_rank")), _label(md.get("exit_code")), _label(md.get("signal")),
        ).inc()
        latency_ms = md.get("detect_latency_ms")
        if isinstance(latency_ms, (int, float)):
            self.metrics.child("elastiscope_failure_detection_seconds", role).observe(latency_ms / 1000.0)

    def _worker_stalled(self, event: Event) -> None:
        self.metrics.child("elastiscope_stalls_total", self._role(event.metadata)).inc()

    def _observe_duration(self, series: str, event: Event) -> None:
        duration_ms = event.metadata.get("duration_ms")
        if isinstance(duration_ms, (int, float)):
            self.metrics.child(series, self._role(event.metadata)).observe(duration_ms / 1000.0)

    def _rendezvous_duration(self, event: Event) -> None:
        self._observe_duration("elastiscope_rendezvous_duration_seconds", event)

    def _rank_assignment_duration(self, event: Event) -> None:
        self._observe_duration("elastiscope_rank_assignment_duration_seconds", event)

    # -- put_metric ------------------------------------------------------------------------
    def _target(self, point: MetricPoint) -> MetricTarget:
        return self._target_of(point.group_name, point.name)

    def _target_of(self, group: str, name: str) -> MetricTarget:
        key = (group, name)
        target = self._targets.get(key)
        if target is None:
            target = self._targets[key] = classify_metric(group, name)
        return target

    def _generic(self, point: MetricPoint, labels: tuple[str, ...]) -> None:
        self._set_gauge("elastiscope_torchelastic_metric", (point.group_name, point.name), point.value)

    def _remaining_restarts(self, point: MetricPoint, labels: tuple[str, ...]) -> None:
        self._set_gauge("elastiscope_remaining_restarts", labels, point.value)

    def _group_state(self, point: MetricPoint, labels: tuple[str, ...]) -> None:
        if point.value:  # torch publishes 1 for the state entered; 0 says nothing
            self._set_group_state(*labels)

    def _run_outcome(self, point: MetricPoint, labels: tuple[str, ...]) -> None:
        self.metrics.child("elastiscope_runs_total", *labels).inc(max(0.0, point.value))

    def _run_total(self, point: MetricPoint, labels: tuple[str, ...]) -> None:
        pass  # the sum of the four run outcomes, which elastiscope_runs_total already holds

    def _flakiness(self, point: MetricPoint, labels: tuple[str, ...]) -> None:
        self._set_gauge("elastiscope_flakiness_percent", labels, point.value)

    def _worker_cpu(self, point: MetricPoint, labels: tuple[str, ...]) -> None:
        self.metrics.set_worker_cpu(*labels, point.value)

    def _worker_rss(self, point: MetricPoint, labels: tuple[str, ...]) -> None:
        self._set_gauge("elastiscope_worker_resident_memory_bytes", labels, point.value)

    def _worker_start_duration(self, point: MetricPoint, labels: tuple[str, ...]) -> None:
        self.metrics.child("elastiscope_worker_start_duration_seconds", self.role).observe(point.value / 1000.0)

    def _worker_stop_duration(self, point: MetricPoint, labels: tuple[str, ...]) -> None:
        self.metrics.child("elastiscope_worker_stop_duration_seconds", self.role).observe(point.value / 1000.0)

    # A worker's progress: one put_metric name per field of its record (agent/progress.py).
    _PROGRESS_GAUGES = {
        "reporting": "elastiscope_worker_reporting_progress",
        "last_step_time": "elastiscope_worker_last_step_timestamp_seconds",
        "global_step": "elastiscope_worker_global_step",
        # stalls (agent/stall_watch.py)
        "stalled": "elastiscope_worker_stalled",
        "seconds_since_progress": "elastiscope_worker_seconds_since_progress",
        "forward_seconds": "elastiscope_worker_forward_seconds",
        "straggler_ratio": "elastiscope_worker_straggler_ratio",
        "straggler": "elastiscope_worker_straggler",
    }

    def _worker_progress(self, point: MetricPoint, labels: tuple[str, ...]) -> None:
        role, rank, what, arg = labels
        gauge = self._PROGRESS_GAUGES.get(what)
        if gauge is not None:
            self._set_gauge(gauge, (role, rank), point.value)
        elif what == "steps":
            self.metrics.set_worker_steps(role, rank, point.value)
        elif what == "step_duration_bucket" and arg.isdigit():
            self.metrics.set_step_duration_bucket(role, rank, int(arg), point.value)
        elif what == "step_duration_sum":
            self.metrics.set_step_duration_sum(role, rank, point.value)
        elif what == "checkpoint_step" and arg in ("saved", "loaded"):
            self._set_gauge("elastiscope_worker_checkpoint_step", (role, rank, arg), point.value)
        elif what == "scalar" and arg:
            self._set_gauge("elastiscope_worker_progress_scalar", (role, rank, arg), point.value)
        else:
            self._generic(point, labels)

    def _node_step_rate(self, point: MetricPoint, labels: tuple[str, ...]) -> None:
        self._set_gauge("elastiscope_node_steps_per_second", labels, point.value)

    def _goodput(self, point: MetricPoint, labels: tuple[str, ...]) -> None:
        role, what, reason = labels
        if what == "ratio":
            self._set_gauge("elastiscope_goodput_ratio", (role,), point.value)
        elif what == "productive_seconds":
            self.metrics.set_goodput_seconds(role, None, point.value)
        elif what == "badput_seconds" and reason:
            self.metrics.set_goodput_seconds(role, reason, point.value)
        else:
            self._generic(point, labels)
