"""The barrier agents pass once their workers are done, so that no agent leaves under the others.

Same store keys as torch's agent barrier (``torch.distributed.elastic.utils.store.barrier``), so
a job mixing our agents and torch's still meets. Two differences, both about leaving:

* We wait in Python, in short polls, instead of in ``store.wait``. That call blocks in C++,
  where Python runs no signal handler: a SIGTERM sent to an agent in the barrier took effect
  only when the barrier ended, up to ``exit_barrier_timeout`` (300 s) later. Between polls the
  handler runs at once.
* Polling has a window torch's push-notified wait barely has: the last agent to arrive can see
  the barrier complete and exit before the others' next poll; if it hosts the store, their poll
  then fails and so does their barrier. So, once through, each agent counts itself out and
  waits (``departure_timeout`` at most) until all have: the store's host stays until every agent
  has seen the barrier complete.
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["barrier_between_agents"]

logger = logging.getLogger(__name__)

# torch's barrier writes this value; nothing reads it, only the key's presence counts.
_PRESENT = "<val_ignored>"


def barrier_between_agents(
    store: Any,
    world_size: int,
    key_prefix: str,
    barrier_timeout: float,
    poll_interval: float = 0.05,
    departure_timeout: float = 5.0,
) -> None:
    """Return once all ``world_size`` agents have arrived; TimeoutError after ``barrier_timeout``.

    Anything going wrong after the barrier completed (while waiting for the others to leave) is
    not the barrier's failure and is only logged.
    """
    last_member_key = f"{key_prefix}/last_member"
    if store.add(f"{key_prefix}/num_members", 1) == world_size:
        store.set(last_member_key, _PRESENT)
    deadline = time.monotonic() + barrier_timeout
    while not store.check([last_member_key]):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"exit barrier: not every agent arrived within {barrier_timeout}s")
        time.sleep(poll_interval)
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
