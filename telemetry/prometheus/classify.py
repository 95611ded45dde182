"""Which series a torchelastic ``put_metric(name, value, group)`` updates.

Pure functions of the (group, name) pair, so callers may cache the answer per name.
docs/reference.md's put_metric table documents the same mapping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from telemetry import names

__all__ = ["MetricKind", "MetricTarget", "classify_metric"]


class MetricKind(str, Enum):
    """The kind of update a put_metric name asks for (one per handler of the Prometheus sink)."""

    GENERIC = "generic"
    RUN_OUTCOME = "run_outcome"
    RUN_TOTAL = "run_total"
    FLAKINESS = "flakiness"
    REMAINING_RESTARTS = "remaining_restarts"
    GROUP_STATE = "group_state"
    WORKER_CPU = "worker_cpu"
    WORKER_RSS = "worker_rss"
    WORKER_START_DURATION = "worker_start_duration"
    WORKER_STOP_DURATION = "worker_stop_duration"
    WORKER_PROGRESS = "worker_progress"
    NODE_STEP_RATE = "node_step_rate"
    GOODPUT = "goodput"


@dataclass(frozen=True)
class MetricTarget:
    """Where one put_metric name lands: a ``kind`` of update and the label values it fixes
    (``labels`` starts with the role when the name carries one)."""

    kind: MetricKind
    labels: tuple[str, ...] = ()


# torchelastic's run outcome suffixes -> (outcome, retried) labels of elastiscope_runs_total.
_RUN_OUTCOME_SUFFIXES = {
    "run_success_with_retries": ("succeeded", "true"),
    "run_success_no_retries": ("succeeded", "false"),
    "run_failed_with_retries": ("failed", "true"),
    "run_failed_no_retries": ("failed", "false"),
}
# Suffixes whose kind is named like the suffix itself; each carries only the role.
_ROLE_SUFFIXES = {
    "run_total": MetricKind.RUN_TOTAL,
    "flakiness": MetricKind.FLAKINESS,
    "remaining_restarts": MetricKind.REMAINING_RESTARTS,
}
# torch publishes the group state as workers.<role>.<state in lower case>.
_STATE_SUFFIXES = {state.lower(): state for state in names.WORKER_STATES}
_WORKER_RESOURCE = re.compile(r"^workers\.(?P<role>.+)\.worker\.(?P<rank>\d+)\.(?P<what>cpu_seconds|rss_bytes)$")
# A worker's progress: labels (role, rank, what, argument); the argument is a bucket index, a
# checkpoint kind or a scalar's name (bounded by the worker's record: see docs/reference.md).
_WORKER_PROGRESS = re.compile(
    r"^workers\.(?P<role>.+)\.worker\.(?P<rank>\d+)\.progress\.(?P<what>[a-z_]+)(?:\.(?P<arg>[a-z0-9_]+))?$")
# The agent's goodput totals: labels (role, what, reason); see agent/goodput.py.
_GOODPUT = re.compile(
    r"^workers\.(?P<role>.+)\.goodput\.(?P<what>productive_seconds|badput_seconds|ratio)(?:\.(?P<reason>[a-z_]+))?$")
_PROF_STEP = re.compile(r"^(?:.+\.)?_(?P<step>start|stop)_workers\.duration\.ms$")


def classify_metric(group: str, name: str) -> MetricTarget:
    """Map one ``put_metric(name, value, group)`` to its series. Pure, so results can be cached."""
    m = _PROF_STEP.match(name)
    if m:
        step = MetricKind.WORKER_START_DURATION if m["step"] == "start" else MetricKind.WORKER_STOP_DURATION
        return MetricTarget(step)
    if name.startswith("workers."):
        m = _WORKER_RESOURCE.match(name)
        if m:
            kind = MetricKind.WORKER_CPU if m["what"] == "cpu_seconds" else MetricKind.WORKER_RSS
            return MetricTarget(kind, (m["role"], m["rank"]))
        m = _WORKER_PROGRESS.match(name)
        if m:
            return MetricTarget(MetricKind.WORKER_PROGRESS, (m["role"], m["rank"], m["what"], m["arg"] or ""))
        m = _GOODPUT.match(name)
        if m:
            return MetricTarget(MetricKind.GOODPUT, (m["role"], m["what"], m["reason"] or ""))
        if name.endswith(".progress.steps_per_second"):
            return MetricTarget(MetricKind.NODE_STEP_RATE, (name[len("workers."):-len(".progress.steps_per_second")],))
        role, _, suffix = name[len("workers."):].rpartition(".")
        if role:
            if suffix in _RUN_OUTCOME_SUFFIXES:
                return MetricTarget(MetricKind.RUN_OUTCOME, (role, *_RUN_OUTCOME_SUFFIXES[suffix]))
            if suffix in _ROLE_SUFFIXES:
                return MetricTarget(_ROLE_SUFFIXES[suffix], (role,))
            if suffix in _STATE_SUFFIXES:
                return MetricTarget(MetricKind.GROUP_STATE, (role, _STATE_SUFFIXES[suffix]))
    return MetricTarget(MetricKind.GENERIC)
