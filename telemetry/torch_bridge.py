"""torch's rendezvous events as ours: the torch-free half of the bridge from torch's telemetry.

torch's c10d/etcd rendezvous records an ``RdzvEvent`` at each step; :func:`rendezvous_event`
turns one (the dataclass, its JSON line, or a mapping of its fields) into an event named
``elastiscope.rendezvous.<torch's name>`` with the RdzvEvent's fields as metadata. The patches
that route torch's events and metrics here live in the agent (``agent.torch_patches``):
telemetry never patches torch, and this module never imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from telemetry.events import metadata_scalar
from telemetry.names import RENDEZVOUS_PREFIX
from telemetry.records import Event, EventSource, now_ms

__all__ = ["rendezvous_event"]


def rendezvous_event(rdzv_event: Any) -> Event:
    """Our event for one torch ``RdzvEvent`` (or its JSON, or a mapping of its fields)."""
    if isinstance(rdzv_event, (str, bytes)):
        fields = json.loads(rdzv_event)
    elif isinstance(rdzv_event, Mapping):
        fields = dict(rdzv_event)
    else:
        fields = asdict(rdzv_event)
    torch_name = str(fields.pop("name", "") or "unknown")
    # torch names its events "<file>:<Class>.<method>"; the file adds nothing for readers.
    short = torch_name.split(":", 1)[-1]
    node_state = fields.get("node_state")
    fields["node_state"] = getattr(node_state, "name", node_state)
    metadata = {k: metadata_scalar(v) for k, v in fields.items()}
    metadata["torch_event"] = torch_name
    return Event(RENDEZVOUS_PREFIX + short, EventSource.AGENT, now_ms(), metadata)

