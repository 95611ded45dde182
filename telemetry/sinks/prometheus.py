"""Prometheus sink: turns events and put_metric points into updates of the catalogue's series.

Synchronous (an update is a dict lookup and a locked add), so /metrics is current the moment
a record is published. The mapping of each input to its series is documented in
docs/reference.md and defined by ``telemetry.metrics.CATALOGUE`` / ``classify_metric``.
"""

from __future__ import annotations

import threading
from typing import Callable

from telemetry.events import Event
from telemetry.metrics import AgentMetrics, MetricTarget, classify_metric
from telemetry.pipeline import Sink
from telemetry.records import MetricPoint

__all__ = ["PrometheusSink"]


def _label(value: object) -> str:
    return "" if value is None else str(value)


class PrometheusSink(Sink):
    name = "prometheus"
    synchronous = True

    def __init__(self, metrics: AgentMetrics | None = None, role: str | None = None) -> None:
        self.metrics = metrics or AgentMetrics()
        # prof metrics carry no role; they take the role of the run in progress.
        self.role = role or ""
        self._targets: dict[tuple[str, str], MetricTarget] = {}
        self._event_counters: dict[tuple[str, str], object] = {}
        self._restart_started: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._on_event: dict[str, Callable[[Event], None]] = {
            "elastiscope.agent.run_start": self._run_start,
            "elastiscope.agent.state_change": self._state_change,
            "elastiscope.agent.restart": self._restart,
            "elastiscope.rendezvous.complete": self._rendezvous_complete,
            "elastiscope.worker.failed": self._worker_failed,
            "torchelastic.worker.status.RENDEZVOUS": self._rendezvous_duration,
            "torchelastic.worker.status.ASSIGN_WORKER_RANKS": self._rank_assignment_duration,
        }
        # Children whose label values are known now start at 0 (the role's, at run start).
        self.metrics.count_events_from_zero()

    def emit(self, record: Event | MetricPoint) -> None:
        if type(record) is MetricPoint:
            self._metric(record)
        else:
            self._event(record)

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
            m.child("elastiscope_max_restarts", role).set(max_restarts)
            m.child("elastiscope_remaining_restarts", role).set(max_restarts)
        else:
            max_restarts = None
        backend = md.get("rdzv_backend")
        m.start_run(role, max_restarts, backend if isinstance(backend, str) else None)

    def _state_change(self, event: Event) -> None:
        md = event.metadata
        role, state = self._role(md), _label(md.get("state"))
        self.metrics.set_group_state(role, state)
        if state == "HEALTHY":
            with self._lock:
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
            self.metrics.child("elastiscope_remaining_restarts", role).set(remaining)
        with self._lock:
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
                self.metrics.child(series, role).set(value)

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
        key = (point.group_name, point.name)
        target = self._targets.get(key)
        if target is None:
            target = self._targets[key] = classify_metric(point.group_name, point.name)
        return target

    def repeat_key(self, point: MetricPoint) -> object:
        """The series a point sets (see ``Sink.repeat_key``), or None for one that adds.

        Generic names, remaining restarts and the group state are plain sets: the same point
        twice in a row changes nothing (the group state's key is the role's, whichever state's
        name set it). Counters and histograms (run outcomes, durations) count every point.
        """
        target = self._target(point)
        if target.kind == "generic":
            return ("generic", point.group_name, point.name)
        if target.kind in ("remaining_restarts", "group_state"):
            return (target.kind, target.labels[0])
        return None

    def _metric(self, point: MetricPoint) -> None:
        target = self._target(point)
        value, labels, m = point.value, target.labels, self.metrics
        kind = target.kind
        if kind == "generic":
            m.child("elastiscope_torchelastic_metric", point.group_name, point.name).set(value)
        elif kind == "remaining_restarts":
            m.child("elastiscope_remaining_restarts", *labels).set(value)
        elif kind == "group_state":
            if value:
                m.set_group_state(*labels)
        elif kind == "run_outcome":
            m.child("elastiscope_runs_total", *labels).inc(max(0.0, value))
        elif kind == "run_total":
            pass  # the sum of the four run outcomes, which elastiscope_runs_total already holds
        elif kind == "flakiness":
            m.child("elastiscope_flakiness_percent", *labels).set(value)
        elif kind == "worker_cpu":
            m.set_worker_cpu(*labels, value)
        elif kind == "worker_rss":
            m.child("elastiscope_worker_resident_memory_bytes", *labels).set(value)
        elif kind == "worker_start_duration":
            m.child("elastiscope_worker_start_duration_seconds", self.role).observe(value / 1000.0)
        elif kind == "worker_stop_duration":
            m.child("elastiscope_worker_stop_duration_seconds", self.role).observe(value / 1000.0)
