"""The other agents' pages (agent/page_peers.py) through a real TCPStore on 127.0.0.1, and the
straggler and stall marks /status carries (agent/worker_status.py)."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from torch.distributed import TCPStore

from agent.page_peers import REREAD_S, PagePeers, PublishPageAtRendezvous, page_url
from agent.worker_status import WorkerMarks
from telemetry.events import Event, EventSource
from telemetry.names import RENDEZVOUS_COMPLETE


@pytest.fixture
def store():
    server = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10))
    yield server


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _round(group_rank: int, port: int = 29500) -> dict:
    return {"run_id": "job", "group_rank": group_rank, "master_addr": "10.0.0.1", "master_port": port}


def _agents(store, size: int, clock):
    groups = [SimpleNamespace(store=store, group_rank=r, group_world_size=size) for r in range(size)]
    return [PagePeers(f"http://node-{r}:9400", f"node-{r}", lambda g=g: g, clock=clock) for r, g in enumerate(groups)]


def test_each_agent_lists_the_others_once_they_published_this_round(store):
    clock = Clock()
    a, b, c = _agents(store, 3, clock)
    a.publish(_round(0))
    b.publish(_round(1))
    assert a.peers() == [{"group_rank": 1, "hostname": "node-1", "url": "http://node-1:9400"}]
    c.publish(_round(2))
    assert [p["group_rank"] for p in a.peers()] == [1], "re-read only every few seconds"
    clock.now += REREAD_S
    assert [p["group_rank"] for p in a.peers()] == [1, 2]
    assert [p["group_rank"] for p in c.peers()] == [0, 1]


def test_a_new_round_forgets_the_last_rounds_pages(store):
    clock = Clock()
    a, b = _agents(store, 2, clock)
    a.publish(_round(0, port=1))
    b.publish(_round(1, port=1))
    assert len(a.peers()) == 1
    a.publish(_round(0, port=2))  # the next round: b has not published in it yet
    assert a.peers() == []


def test_no_store_no_round_or_a_broken_store_means_no_peers_and_no_error():
    class Broken:
        def set(self, *a):
            raise RuntimeError("store gone")

        check = get = set

    group = SimpleNamespace(store=Broken(), group_rank=0, group_world_size=2)
    peers = PagePeers("http://a:1", "a", lambda: group)
    peers.publish(_round(0))
    assert peers.peers() == []
    assert PagePeers("http://a:1", "a", lambda: None).peers() == []
    peers.publish({"run_id": "job"})  # no master address: not a round
    assert peers.peers() == []


def test_the_sink_publishes_at_each_completed_rendezvous(store):
    group = SimpleNamespace(store=store, group_rank=0, group_world_size=2)
    peers = PagePeers("http://a:1", "a", lambda: group)
    sink = PublishPageAtRendezvous(peers)
    event = Event(RENDEZVOUS_COMPLETE, EventSource.AGENT, 0, _round(0))
    assert sink.wants(event) and not sink.wants(Event("other", EventSource.AGENT, 0, {}))
    sink.emit(event)
    assert store.check(["elastiscope/pages/job/10.0.0.1:29500/0"])


def test_a_wildcard_bind_is_named_by_the_host():
    assert page_url("http://0.0.0.0:9400", "node-a.example") == "http://node-a.example:9400"
    assert page_url("http://[::]:9400", "node-a.example") == "http://node-a.example:9400"
    assert page_url("http://10.1.2.3:9400", "node-a.example") == "http://10.1.2.3:9400"


def test_worker_marks_name_stragglers_and_stalled_workers():
    marks = WorkerMarks.read(lambda: [1], lambda: {0: 12.5})
    assert marks.of(0) == {"straggler": False, "stalled": True}
    assert marks.of(1) == {"straggler": True, "stalled": False}

    def racing():
        raise RuntimeError("dictionary changed size during iteration")

    assert WorkerMarks.read(racing, lambda: []).of(0) == {"straggler": False, "stalled": False}
