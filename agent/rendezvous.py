"""Rendezvous adjustments the local agent makes around torch's handlers.

Two costs torch's ``DynamicRendezvousHandler`` (the c10d and etcd-v2 backends, and so
``--standalone``) adds to every launch and restart, and that have nothing to do with the
rendezvous itself:

**Event names.** Each rendezvous event is named after the method that records it, found by
building the whole call stack twice with ``inspect.stack()``, which opens and stats the source
file of every frame. In an agent's deep stack that is 2-10 ms per event and eight or so events
per rendezvous: 20-80 ms of each restart. :func:`install` gives the module a lookup that walks
frames without reading sources; the names it returns are the same (the code object's name of
the frame ``depth`` levels up).

**Join jitter.** The handler waits a random 0-0.3 s before a node joins while its view of the
round counter is still 0: at the first rendezvous and again at the first re-rendezvous after a
restart. The wait spreads the first joins of many nodes over time so they do not all reach the
store at once. A rendezvous that admits one node (``max_nodes == 1``) has nobody to spread out,
so there the wait is pure launch and restart latency, 0.15 s on average. :func:`joining` skips
that one wait, and only it: for a handler admitting a single node, on the thread that is
joining. Every other wait torch makes (the one-second pause between
state polls while other nodes are awaited) and every multi-node rendezvous are left as they are.
The rendezvous itself, its state, store and events, stay torch's.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["install", "joining", "admits_one_node"]

logger = logging.getLogger(__name__)

_state = threading.local()
_install_lock = threading.Lock()
_installed = False
# torch's own delay function, captured when the wrapper goes in; tests may replace it.
_torch_delay: Any = None
_torch_method_name: Any = None


def admits_one_node(handler: Any) -> bool:
    """True for a dynamic rendezvous handler whose settings admit at most one node."""
    try:
        from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler
    except Exception:  # pragma: no cover - torch without the dynamic handler
        return False
    if not isinstance(handler, DynamicRendezvousHandler):
        return False
    settings = getattr(handler, "settings", None)
    return getattr(settings, "max_nodes", None) == 1


def _delay(seconds: Any) -> None:
    # A (low, high) range is the join jitter; a plain number is a poll interval, always kept.
    if isinstance(seconds, tuple) and getattr(_state, "alone", False):
        return
    _torch_delay(seconds)


def _method_name(depth: int = 2) -> str:
    # Frame 0 is this function, as index 0 of inspect.stack() is the function calling it.
    try:
        return sys._getframe(depth).f_code.co_name
    except ValueError:
        return "no_method_name"


def install() -> bool:
    """Give torch's dynamic rendezvous the fast event names and the jitter switch, once."""
    global _installed, _torch_delay, _torch_method_name
    with _install_lock:
        if _installed:
            return True
        try:
            from torch.distributed.elastic.rendezvous import dynamic_rendezvous
        except Exception:  # pragma: no cover - torch without the dynamic handler
            return False
        current = getattr(dynamic_rendezvous, "_delay", None)
        if not callable(current):
            logger.debug("torch's dynamic rendezvous has no _delay; join jitter left as is")
            return False
        _torch_delay = current
        dynamic_rendezvous._delay = _delay
        if callable(getattr(dynamic_rendezvous, "get_method_name", None)):
            _torch_method_name = dynamic_rendezvous.get_method_name
            dynamic_rendezvous.get_method_name = _method_name
        _installed = True
        return True


@contextmanager
def joining(handler: Any) -> Iterator[None]:
    """Around a join of ``handler``: fast event names; no join jitter if it admits one node."""
    if not install() or not admits_one_node(handler):
        yield
        return
    previous = getattr(_state, "alone", False)
    _state.alone = True
    try:
        yield
    finally:
        _state.alone = previous
