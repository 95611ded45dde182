"""The barrier agents pass once their workers are done, so that no agent leaves under the others.

It is torch's agent barrier, ``torch.distributed.elastic.utils.store.barrier``, called through
its module at the time of the call (so a job mixing our agents and torch's meets on the same
keys, and a test or a user patching that function reaches ours too), with two differences, both
about leaving:

* torch's barrier ends in ``store.wait``, which blocks in C++, where Python runs no signal
  handler: a SIGTERM sent to an agent in the barrier took effect only when the barrier ended, up
  to ``exit_barrier_timeout`` (300 s) later. So the barrier is handed the store behind
  ``InterruptibleWaits``, whose ``wait`` polls in Python (short ``check`` calls) until the
  timeout torch's barrier set on the store; between polls the handler runs at once. Everything
  else goes to the real store unchanged.
* Polling has a window torch's push-notified wait barely has: the last agent to arrive can see
  the barrier complete and exit before the others' next poll; if it hosts the store, their poll
  then fails and so does their barrier. So, once through, each agent counts itself out and
  waits (``departure_timeout`` at most) until all have: the store's host stays until every agent
  has seen the barrier complete.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any, Sequence

__all__ = ["barrier_between_agents", "InterruptibleWaits"]

logger = logging.getLogger(__name__)

# torch's barrier writes this value; nothing reads it, only the key's presence counts.
_PRESENT = "<val_ignored>"


class InterruptibleWaits:
    """A store whose ``wait`` polls in Python, so that signal handlers run while it waits.

    ``wait`` honours the store's timeout as ``store.wait`` does, and on expiry raises what
    ``store.wait`` raises (torch's ``DistStoreError``). Every other call goes to ``store``.
    """

    def __init__(self, store: Any, poll_interval: float = 0.05) -> None:
        self._store = store
        self._poll_interval = poll_interval

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @property
    def timeout(self) -> timedelta:
        return self._store.timeout

    def set_timeout(self, timeout: timedelta) -> None:
        self._store.set_timeout(timeout)

    def wait(self, keys: Sequence[str], timeout: timedelta | None = None) -> None:
        limit = (timeout if timeout is not None else self._store.timeout).total_seconds()
        deadline = time.monotonic() + limit
        while not self._store.check(list(keys)):
            if time.monotonic() >= deadline:
                from torch.distributed import DistStoreError  # loaded by the store's owner already

                raise DistStoreError(f"exit barrier: keys {list(keys)} not set within {limit:g}s "
                                     "(not every agent arrived)")
            time.sleep(self._poll_interval)


def barrier_between_agents(
    store: Any,
    world_size: int,
    key_prefix: str,
    barrier_timeout: float,
    poll_interval: float = 0.05,
    departure_timeout: float = 5.0,
) -> None:
    """Return once all ``world_size`` agents have arrived; torch's ``DistStoreError`` after
    ``barrier_timeout``.

    Anything going wrong after the barrier completed (while waiting for the others to leave) is
    not the barrier's failure and is only logged.
    """
    # torch is imported by whoever built the store; the import stays here so that importing
    # the agent's core (agent.api) does not load torch.
    from torch.distributed.elastic.utils import store as store_util

    store_util.barrier(
        store=InterruptibleWaits(store, poll_interval),
        world_size=world_size,
        key_prefix=key_prefix,
        barrier_timeout=barrier_timeout,
    )
    try:
        _wait_for_departures(store, world_size, key_prefix, poll_interval, departure_timeout)
    except Exception:
        logger.debug("exit barrier: could not wait for the other agents to leave", exc_info=True)


def _wait_for_departures(
    store: Any, world_size: int, key_prefix: str, poll_interval: float, departure_timeout: float
) -> None:
    all_departed_key = f"{key_prefix}/all_departed"
    if store.add(f"{key_prefix}/num_departed", 1) >= world_size:
        store.set(all_departed_key, _PRESENT)
        return
    leave_by = time.monotonic() + departure_timeout
    while not store.check([all_departed_key]) and time.monotonic() < leave_by:
        time.sleep(min(poll_interval, 0.01))
