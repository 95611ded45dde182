"""How the local agent joins a rendezvous: without torch's join jitter when it would only cost.

torch's ``DynamicRendezvousHandler`` (the c10d and etcd-v2 backends, and so ``--standalone``)
waits a random 0-0.3 s before a node joins while its view of the round counter is still 0: at
the first rendezvous and again at the first re-rendezvous after a restart. The wait spreads the
first joins of many nodes over time so they do not all reach the store at once. A rendezvous
that admits one node (``max_nodes == 1``) has nobody to spread out, so there the wait is pure
launch and restart latency, 0.15 s on average. :func:`joining` skips that one wait, and only
it: for a handler admitting a single node, on the thread that is joining. Every other wait
torch makes (the one-second pause between state polls while other nodes are awaited) and every
multi-node rendezvous are left as they are. The rendezvous itself, its state, store and events,
stay torch's.

The switch that makes the skip possible is one of ``agent.torch_patches`` (applied when an agent
is constructed); until it is applied, :func:`joining` changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from agent import torch_patches

__all__ = ["joining", "admits_one_node"]


def admits_one_node(handler: Any) -> bool:
    """True for a dynamic rendezvous handler whose settings admit at most one node."""
    # Imported here, not above: agent.local imports this module and must not load torch's
    # rendezvous machinery before it is needed.
    try:
        from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler
    except Exception:  # pragma: no cover - torch without the dynamic handler
        return False
    if not isinstance(handler, DynamicRendezvousHandler):
        return False
    settings = getattr(handler, "settings", None)
    return getattr(settings, "max_nodes", None) == 1


@contextmanager
def joining(handler: Any) -> Iterator[None]:
    """Around a join of ``handler``: no join jitter if it admits one node."""
    switch = torch_patches.join_jitter_switch()
    if switch is None or not admits_one_node(handler):
        yield
        return
    with switch.skipping():
        yield
