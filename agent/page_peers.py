"""The pages of the job's other agents: each agent writes its endpoint's address into the
rendezvous store once per rendezvous round, and reads the others' back for its page.

Written when the round completes (the ``elastiscope.rendezvous.complete`` event), by a queued
pipeline sink, so the run loop never waits on the store for it. Keys are per round: the round's
master address and port, which every agent of the round shares (a restart count is not: an agent
that joined later counts its own). Reads use only ``check`` and ``get`` (never a wait on a key
that may not exist), at most every ``REREAD_S`` seconds until every peer is known, and any store
error means "no peers known", silently: the page is an aid, never a reason to fail.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable

from telemetry.names import RENDEZVOUS_COMPLETE
from telemetry.sink import Sink

__all__ = ["PagePeers", "PublishPageAtRendezvous", "REREAD_S", "page_url"]

logger = logging.getLogger(__name__)

REREAD_S = 5.0  # seconds between two reads of the store while some peer is still unknown
_KEY_ROOT = "elastiscope/pages"


def page_url(bound_url: str, hostname: str) -> str:
    """The address other agents can reach: a wildcard bind (0.0.0.0, ::) names this host."""
    scheme, _, rest = bound_url.partition("://")
    host, _, port = rest.rpartition(":")
    if host in ("0.0.0.0", "[::]"):
        return f"{scheme}://{hostname}:{port}"
    return bound_url


def round_prefix(metadata: dict[str, Any]) -> str | None:
    """The key prefix of the round a rendezvous-complete event describes (None: unknown)."""
    addr, port = metadata.get("master_addr"), metadata.get("master_port")
    if not addr or port is None:
        return None
    return f"{_KEY_ROOT}/{metadata.get('run_id')}/{addr}:{port}"


class PagePeers:
    """This agent's page address, published per round, and the other agents' pages, read back.

    ``group`` returns the agent's current ``WorkerGroup`` (torch's ``get_worker_group()``), or
    None before the agent exists.
    """

    def __init__(self, url: str, hostname: str, group: Callable[[], Any],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.hostname = hostname
        self._group = group
        self._clock = clock
        self._lock = threading.Lock()
        self._prefix: str | None = None  # the round last published in
        self._peers: list[dict[str, Any]] = []
        self._read_at = -float("inf")

    def publish(self, metadata: dict[str, Any]) -> None:
        """Write this agent's page under the round of a rendezvous-complete event."""
        prefix = round_prefix(metadata)
        group = self._group()
        store = getattr(group, "store", None)
        if prefix is None or store is None:
            return
        rank = metadata.get("group_rank", getattr(group, "group_rank", None))
        record = {"group_rank": rank, "hostname": self.hostname, "url": self.url}
        try:
            store.set(f"{prefix}/{rank}", json.dumps(record))
        except Exception:
            logger.debug("could not publish this agent's page", exc_info=True)
            return
        with self._lock:
            self._prefix, self._peers, self._read_at = prefix, [], -float("inf")

    def peers(self) -> list[dict[str, Any]]:
        """The other agents' pages known this round (group rank order); never raises."""
        group = self._group()
        with self._lock:
            prefix, known, read_at = self._prefix, self._peers, self._read_at
        size = getattr(group, "group_world_size", None) or 0
        me = getattr(group, "group_rank", None)
        if prefix is None or group is None or size <= 1:
            return []
        if len(known) >= size - 1 or self._clock() - read_at < REREAD_S:
            return list(known)
        found = self._read(group.store, prefix, [r for r in range(size) if r != me])
        with self._lock:
            if self._prefix == prefix:  # a newer round may have been published meanwhile
                self._peers, self._read_at = found, self._clock()
        return found

    @staticmethod
    def _read(store: Any, prefix: str, ranks: list[int]) -> list[dict[str, Any]]:
        found = []
        try:
            for rank in ranks:
                key = f"{prefix}/{rank}"
                if store is not None and store.check([key]):
                    record = json.loads(store.get(key))
                    if isinstance(record, dict) and isinstance(record.get("url"), str):
                        found.append({"group_rank": rank, "hostname": record.get("hostname"),
                                      "url": record["url"]})
        except Exception:  # the store is gone or mid-change: what was read is what is known
            logger.debug("could not read the other agents' pages", exc_info=True)
        return found


class PublishPageAtRendezvous(Sink):
    """A queued pipeline sink: each completed rendezvous round publishes this agent's page."""

    name = "page_peers"
    synchronous = False  # a store round trip: off the run loop's thread
    events = True
    metrics = False
    queue_size = 8

    def __init__(self, peers: PagePeers) -> None:
        self._peers = peers

    def wants(self, record: object) -> bool:
        return getattr(record, "name", None) == RENDEZVOUS_COMPLETE

    def emit(self, record: Any) -> None:
        self._peers.publish(dict(record.metadata or {}))
