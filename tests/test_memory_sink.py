"""The event ring: bounded, numbered without repeats, filtered by query, and waitable."""

from __future__ import annotations

import threading
import time

from telemetry import Event, EventSource
from telemetry.sinks.memory import MemorySink


def ev(name: str = "n", **metadata) -> Event:
    return Event(name, EventSource.AGENT, 1, metadata)


def test_keeps_the_newest_events_up_to_its_capacity_with_increasing_sequence_numbers():
    ring = MemorySink(capacity=3)
    for i in range(5):
        ring.emit(ev(i=i))
    assert len(ring) == 3
    assert [(seq, e.metadata["i"]) for seq, e in ring.snapshot()] == [(3, 2), (4, 3), (5, 4)]
    assert ring.last_seq() == 5
    assert [e.metadata["i"] for e in ring.events()] == [2, 3, 4]


def test_an_empty_ring_has_sequence_zero():
    assert MemorySink().last_seq() == 0


def test_query_filters_by_sequence_name_prefix_state_source_and_rank():
    ring = MemorySink()
    ring.emit(ev("elastiscope.agent.state_change", state="HEALTHY"))
    ring.emit(Event("torchelastic.worker.status.START", EventSource.WORKER, 1, {"global_rank": 1}))
    ring.emit(ev("elastiscope.agent.state_change", state="FAILED"))
    ring.emit(Event("torchelastic.worker.status.START", EventSource.WORKER, 1, {"global_rank": 0}))
    assert [s for s, _ in ring.query(since=2)] == [3, 4]
    assert [s for s, _ in ring.query(name="elastiscope.agent")] == [1, 3]
    assert [s for s, _ in ring.query(state="FAILED")] == [3]
    assert [s for s, _ in ring.query(source="WORKER")] == [2, 4]
    assert [s for s, _ in ring.query(rank=0)] == [4]
    assert [s for s, _ in ring.query(limit=1)] == [4]
    assert ring.query(limit=0) == []


def test_wait_for_returns_an_event_that_arrives_later():
    ring = MemorySink()
    threading.Timer(0.1, ring.emit, args=(ev("late"),)).start()
    started = time.monotonic()
    found = ring.wait_for(lambda e: e.name == "late", timeout=10)
    assert found is not None and found.name == "late"
    assert time.monotonic() - started < 5


def test_wait_for_gives_up_at_its_timeout():
    ring = MemorySink()
    started = time.monotonic()
    assert ring.wait_for(lambda e: False, timeout=0.2) is None
    assert 0.15 < time.monotonic() - started < 5


def test_listeners_are_called_per_event_and_a_failing_one_does_not_reach_the_producer():
    ring = MemorySink()
    calls = []

    def failing():
        raise RuntimeError("listener broke")

    ring.add_listener(failing)
    ring.add_listener(lambda: calls.append(len(ring)))
    ring.emit(ev())
    ring.emit(ev())
    assert calls == [1, 2]
    ring.remove_listener(failing)
    assert ring.listener_count() == 1
    ring.emit(ev())
    assert calls == [1, 2, 3]


def test_a_removed_listener_is_not_called_again():
    ring = MemorySink()
    calls = []

    def listener():
        calls.append(ring.last_seq())  # the event is already in the ring

    ring.add_listener(listener)
    ring.emit(ev())
    ring.remove_listener(listener)
    ring.emit(ev())
    assert calls == [1] and ring.last_seq() == 2 and ring.listener_count() == 0
