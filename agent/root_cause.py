"""The job-wide first failure: every agent publishes its workers' failures (global rank, time,
reason) through the rendezvous store the group already has, and reads everyone's back, so each
agent can tell the rank that failed first (the root cause) from the ranks that died after it
(collateral: a peer's connection error, a stop).

Uses only torch's ``Store`` calls ``add``, ``set``, ``check`` and ``get``, under a key prefix per
run and attempt, and never waits on a key that may not exist. Times are the exit times seen by
each worker's reaper (epoch seconds), so across hosts the order is as good as their clocks.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PublishedFailure", "FailureBoard", "first_failure", "attribution_fields"]

logger = logging.getLogger(__name__)

# How long after its own first failure an agent waits for the other agents' reports before it
# names a root cause; it stops waiting as soon as every agent of the group has reported. Only a
# failure earlier than ours can change the answer, and another agent publishes one within its
# detection latency (milliseconds: exits are learnt through a selector), so a short window
# covers a busy machine without delaying the restart much.
SETTLE_S = 0.5
_POLL_S = 0.02


@dataclass(frozen=True)
class PublishedFailure:
    global_rank: int
    time: float  # epoch seconds the worker's exit was seen
    reason: str
    hostname: str = ""
    group_rank: int = -1


def first_failure(failures: list[PublishedFailure]) -> PublishedFailure | None:
    """The root cause: the earliest failure (the lowest rank on a tie)."""
    if not failures:
        return None
    return min(failures, key=lambda f: (f.time, f.global_rank))


def attribution_fields(root: PublishedFailure | None, global_rank: int | None = None) -> dict[str, Any]:
    """Event metadata naming the root cause; with ``global_rank``, whether that rank is it."""
    if root is None:
        return {}
    fields: dict[str, Any] = {
        "root_cause_rank": root.global_rank,
        "root_cause_host": root.hostname,
        "root_cause_error": root.reason,
    }
    if global_rank is not None:
        fields["root_cause"] = global_rank == root.global_rank
    return fields


class FailureBoard:
    """One attempt's failures on the job's store, under ``prefix``.

    Never raises: a store that cannot be reached leaves the agent with its own failures only.
    """

    def __init__(self, store: Any, prefix: str, group_rank: int, group_world_size: int) -> None:
        self._store = store
        self._prefix = prefix
        self._group_rank = group_rank
        self._group_world_size = group_world_size
        self._reported = False
        self._local: list[PublishedFailure] = []

    @staticmethod
    def prefix_for(run_id: Any, backend: Any, restart_count: int) -> str:
        # A c10d round has a store of its own (torch prefixes it per round); a static group keeps
        # one store for the whole run, and its agents agree on the restart count.
        attempt = restart_count if backend == "static" else "round"
        return f"elastiscope/failures/{run_id}/{attempt}"

    def publish(self, failures: list[PublishedFailure]) -> None:
        self._local.extend(failures)
        try:
            for failure in failures:
                index = self._store.add(f"{self._prefix}/count", 1) - 1
                self._store.set(f"{self._prefix}/{index}", json.dumps(asdict(failure)))
            if not self._reported:
                self._reported = True
                self._store.add(f"{self._prefix}/agents", 1)
        except Exception:
            logger.warning("could not publish failures to the rendezvous store", exc_info=True)

    def read(self) -> list[PublishedFailure]:
        """Every failure published so far (this agent's own even if the store is gone)."""
        found = {(f.global_rank, f.time): f for f in self._local}
        try:
            count = self._store.add(f"{self._prefix}/count", 0)
            for index in range(count):
                key = f"{self._prefix}/{index}"
                if not self._store.check([key]):  # counted, not yet written
                    continue
                f = PublishedFailure(**json.loads(self._store.get(key)))
                found[(f.global_rank, f.time)] = f
        except Exception:  # the store's host may be gone already: what we know is the answer
            logger.debug("could not read failures from the rendezvous store", exc_info=True)
        return list(found.values())

    def agents_reported(self) -> int:
        try:
            return self._store.add(f"{self._prefix}/agents", 0)
        except Exception:
            return 0

    def settle(self, since: float, window: float = SETTLE_S) -> PublishedFailure | None:
        """The root cause once every agent has reported, or what is known ``window`` seconds
        after ``since`` (epoch seconds: this agent's first failure)."""
        deadline = time.monotonic() + max(0.0, since + window - time.time())
        while self.agents_reported() < self._group_world_size and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        return first_failure(self.read())
