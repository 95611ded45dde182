"""What the status provider and the event ring give us, turned into what the schema promises.

Light on purpose (no web stack): the route functions call these, and so can tests.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

from telemetry.names import AGENT, WORKER, WORKER_STATES

__all__ = [
    "StatusProvider", "StacksProvider", "MetricsRenderer", "json_scalar", "state_name", "normalise_status",
    "event_record",
]

# The agent's side: a callable returning the snapshot of ``LocalElasticAgent.status_snapshot()``.
StatusProvider = Callable[[], Mapping[str, Any]]
# Every local worker's Python stack now (/stacks); the agent's, handed in like the status.
StacksProvider = Callable[[], Mapping[str, Any]]
# (Accept header or None) -> (body, content type), as ``telemetry.config.render_metrics``.
MetricsRenderer = Callable[[Optional[str]], "tuple[bytes, str]"]

# The snapshot keys /status passes through as they are.
_PLAIN_STATUS_KEYS = (
    "run_id", "role", "remaining_restarts", "max_restarts",
    "group_rank", "group_world_size", "world_size",
    "hostname", "time", "event_log", "goodput_ratio", "peers",
)


def json_scalar(value: Any) -> Any:
    """A metadata value the JSON encoder and the schema accept: scalars, non-finite floats as text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return str(value)


def state_name(value: Any) -> str:
    """A worker state (enum or text) as one of torch's names; anything else is UNKNOWN."""
    name = str(getattr(value, "value", value) or "UNKNOWN").upper()
    return name if name in WORKER_STATES else "UNKNOWN"


def normalise_status(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The agent's status snapshot in the shape of the ``Status`` model."""
    out = {key: snapshot.get(key) for key in _PLAIN_STATUS_KEYS}
    out["run_id"] = None if out["run_id"] is None else str(out["run_id"])
    out["state"] = state_name(snapshot.get("state"))
    out["restarts_used"] = int(snapshot.get("restarts_used") or 0)
    workers = []
    for worker in snapshot.get("workers") or ():
        worker = dict(worker)
        worker["state"] = state_name(worker.get("state"))
        workers.append(worker)
    out["workers"] = workers
    return out


def event_record(seq: int, event: Any) -> dict[str, Any]:
    """One ring entry in the shape of the ``EventRecord`` model."""
    source = str(getattr(event.source, "value", event.source))
    return {
        "seq": seq,
        "name": str(event.name),
        "source": source if source in (AGENT, WORKER) else AGENT,
        "timestamp": int(event.timestamp or 0),
        "metadata": {str(k): json_scalar(v) for k, v in (event.metadata or {}).items()},
    }
