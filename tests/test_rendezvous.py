"""A one-node dynamic rendezvous skips torch's join jitter; everything else keeps it.

The jitter is observed, not timed: torch's delay function is replaced by a recorder behind our
wrapper, so each test sees exactly which delays the rendezvous asked for.
"""

from __future__ import annotations

import sys
import uuid

import pytest
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous import dynamic_rendezvous
from torch.distributed.elastic.rendezvous import registry as rdzv_registry

import agent.rendezvous as rendezvous
from agent import torch_patches
from agent.api import WorkerSpec, WorkerState
from agent.local import LocalElasticAgent
from helpers.local_agent import WORKERS
from telemetry import Pipeline, set_pipeline

JITTER = (0, 0.3)


@pytest.fixture
def delays(monkeypatch):
    """Every delay torch's dynamic rendezvous asks for, in order, none of them slept."""
    assert torch_patches.apply()
    seen: list = []
    monkeypatch.setattr(torch_patches.join_jitter_switch(), "original", seen.append)
    return seen


def c10d_handler(max_nodes: int = 1):
    return rdzv_registry.get_rendezvous_handler(
        RendezvousParameters(
            backend="c10d", endpoint="127.0.0.1:0", run_id=f"jitter-{uuid.uuid4().hex[:8]}",
            min_nodes=1, max_nodes=max_nodes, is_host=True,
        )
    )


def test_one_node_join_skips_the_jitter_and_only_inside_the_context(delays):
    handler = c10d_handler()
    with rendezvous.joining(handler):
        handler.next_rendezvous()  # round 0: torch would wait 0-0.3 s here
    assert JITTER not in delays
    handler.next_rendezvous()  # still round 0, outside: torch's wait is back
    assert delays.count(JITTER) == 1
    handler.shutdown()


def test_a_rendezvous_for_several_nodes_keeps_its_jitter(delays):
    handler = c10d_handler(max_nodes=2)
    assert not rendezvous.admits_one_node(handler)
    with rendezvous.joining(handler):
        dynamic_rendezvous._delay(JITTER)
    assert delays == [JITTER]
    handler.shutdown()


def test_poll_waits_are_never_skipped(delays):
    handler = c10d_handler()
    with rendezvous.joining(handler):
        dynamic_rendezvous._delay(1)
    assert delays == [1]
    handler.shutdown()


def test_a_restart_on_one_node_never_waits_for_the_jitter(delays, tmp_path):
    previous = set_pipeline(Pipeline())
    try:
        spec = WorkerSpec(
            role="trainer", local_world_size=2, entrypoint=sys.executable,
            args=("-u", str(WORKERS / "fail_once.py"), "0.2"), rdzv_handler=c10d_handler(),
            max_restarts=1, monitor_interval=0.05, local_addr="127.0.0.1",
        )
        agent = LocalElasticAgent(spec, DefaultLogsSpecs(log_dir=str(tmp_path)))
        result = agent.run()
    finally:
        set_pipeline(previous)
    assert result.state == WorkerState.SUCCEEDED
    assert agent._remaining_restarts == 0  # the restart did go through a second rendezvous
    assert JITTER not in delays


def _name_at(lookup, depth):
    def caller_of_record():
        return record()

    def record():
        return lookup(depth)

    return caller_of_record()


def test_joining_changes_nothing_until_the_patches_are_applied(monkeypatch):
    torch_patches.remove()
    try:
        assert torch_patches.join_jitter_switch() is None
        seen: list = []
        monkeypatch.setattr(dynamic_rendezvous, "_delay", seen.append)
        handler = c10d_handler()
        with rendezvous.joining(handler):
            dynamic_rendezvous._delay(JITTER)
        assert seen == [JITTER]
        handler.shutdown()
    finally:
        monkeypatch.undo()
        torch_patches.apply()


def test_fast_event_names_are_the_names_inspect_stack_gives():
    assert torch_patches.apply()
    ours = dynamic_rendezvous.get_method_name
    assert isinstance(ours, torch_patches.MethodNameLookup)
    torchs = ours.original
    assert torchs is not ours and not isinstance(torchs, torch_patches.MethodNameLookup)
    for depth in (1, 2, 3, 4, 10_000):  # 0 would name the lookup function itself
        assert _name_at(ours, depth) == _name_at(torchs, depth), depth
    assert _name_at(ours, 2) == "caller_of_record"


def test_rendezvous_events_keep_their_method_names(tmp_path):
    from telemetry.events import Event
    from telemetry import Sink

    class Names(Sink):
        name, synchronous = "names", True

        def __init__(self):
            self.seen = []

        def emit(self, record):
            if isinstance(record, Event):
                self.seen.append(record.name)

    names = Names()
    previous = set_pipeline(Pipeline([names]))
    applied = torch_patches.apply()
    try:
        handler = c10d_handler()
        with rendezvous.joining(handler):
            handler.next_rendezvous()
        handler.shutdown()
    finally:
        if applied:
            torch_patches.remove()
        set_pipeline(previous)
    assert any(n.endswith("DynamicRendezvousHandler.next_rendezvous") for n in names.seen), names.seen
    assert any(n.endswith("_DistributedRendezvousOpExecutor.run") for n in names.seen), names.seen
