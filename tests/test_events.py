"""Events are torch's JSON, and record()/emit() reach the sinks without ever raising."""

import io
import json
import signal
import uuid

import pytest
import torch.distributed.elastic.events as torch_events
import torch.distributed.elastic.rendezvous.registry as rdzv_registry
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.utils.distributed import get_free_port

from telemetry import Event, EventSource, Pipeline, emit, get_pipeline, record, set_pipeline, state
from telemetry.events import metadata_scalar
from telemetry.sinks.console import ConsoleEventSink
from telemetry.sinks.memory import MemorySink


@pytest.fixture
def memory():
    sink = MemorySink()
    set_pipeline(Pipeline([sink]))
    return sink


def test_torch_deserializes_our_event():
    ours = Event("x.y", EventSource.WORKER, 123, {"a": 1, "b": None, "c": "s", "d": 1.5, "e": True})
    theirs = torch_events.Event.deserialize(ours.serialize())
    assert (theirs.name, theirs.source, theirs.timestamp, theirs.metadata) == (
        "x.y", torch_events.EventSource.WORKER, 123, ours.metadata)


def test_we_deserialize_torch_event():
    theirs = torch_events.Event("n", torch_events.EventSource.AGENT, 5, {"k": "v"})
    ours = Event.deserialize(theirs.serialize())
    assert ours == Event("n", EventSource.AGENT, 5, {"k": "v"})
    assert ours.serialize() == theirs.serialize()


def test_event_json_has_exactly_torchs_top_level_keys():
    assert set(json.loads(Event("n", EventSource.AGENT).serialize())) == {"name", "source", "timestamp", "metadata"}


def test_record_stamps_wall_clock_time_when_missing(memory):
    ev = Event("n", EventSource.AGENT)
    record(ev)
    assert ev.timestamp > 1_600_000_000_000
    assert memory.events() == [ev]


def test_record_keeps_a_given_timestamp(memory):
    record(Event("n", EventSource.AGENT, timestamp=42))
    assert memory.events()[0].timestamp == 42


def test_record_to_null_still_reaches_every_sink(memory):
    record(Event("n", EventSource.AGENT), "null")
    assert len(memory) == 1


def test_console_destination_prints_the_json_line(memory):
    stream = io.StringIO()
    state.register_destination("console", lambda: ConsoleEventSink(stream))
    record(Event("to.console", EventSource.AGENT, 1), "console")
    assert get_pipeline().flush(5)
    assert json.loads(stream.getvalue())["name"] == "to.console"
    assert len(memory) == 1


def test_unknown_destination_does_not_raise_and_still_delivers(memory):
    record(Event("n", EventSource.AGENT), "no-such-destination")
    assert len(memory) == 1


def test_emit_does_not_route_to_destinations(memory):
    emit(Event("n", EventSource.AGENT))
    assert [e.name for e in memory.events()] == ["n"]


def test_put_metric_and_publish_metric_reach_the_metric_sinks():
    from telemetry import MetricPoint, put_metric
    from telemetry.events import publish_metric
    from telemetry.sink import Sink

    class Points(Sink):
        name, synchronous, events = "points", True, False

        def __init__(self):
            self.got = []

        def emit(self, record):
            assert type(record) is MetricPoint
            self.got.append((record.group_name, record.name, record.value))

    points = Points()
    set_pipeline(Pipeline([points]))
    put_metric("a", 1)
    put_metric("b", 2, "mine")
    publish_metric("g", "c", 3)
    assert points.got == [("torchelastic", "a", 1), ("mine", "b", 2), ("g", "c", 3)]


@pytest.mark.parametrize("value, scalar", [
    (None, None), ("s", "s"), (3, 3), (1.5, 1.5), (True, True), ([1, 2], "[1, 2]"), (ValueError("x"), "x"),
])
def test_metadata_scalar_keeps_scalars_and_turns_anything_else_into_text(value, scalar):
    assert metadata_scalar(value) == scalar


# ---- the agent's own events ---------------------------------------------------------------


def _scripted_agent(max_restarts, outcomes):
    from agent.api import RunResult, SimpleElasticAgent, WorkerSpec, WorkerState

    class Agent(SimpleElasticAgent):
        def _start_workers(self, g):
            return {w.local_rank: 1000 + w.local_rank for w in g.workers}

        def _stop_workers(self, g):
            pass

        def _monitor_workers(self, g):
            state = outcomes.pop(0)
            if state == "FAILED":
                f = ProcessFailure(local_rank=0, pid=1000, exitcode=1, error_file="<none>")
                return RunResult(WorkerState.FAILED, failures={0: f})
            if state == "SUCCEEDED":
                return RunResult(WorkerState.SUCCEEDED, return_values={0: None, 1: None})
            return RunResult(WorkerState[state])

        def _shutdown(self, death_sig=signal.SIGTERM, timeout=None):
            pass

    handler = rdzv_registry.get_rendezvous_handler(RendezvousParameters(
        backend="static", endpoint=f"127.0.0.1:{get_free_port()}", run_id=str(uuid.uuid4()),
        min_nodes=1, max_nodes=1, rank=0))
    spec = WorkerSpec(role="trainer", local_world_size=2, entrypoint="/bin/true",
                      rdzv_handler=handler, max_restarts=max_restarts, monitor_interval=0.01)
    return Agent(spec)


def test_agent_emits_state_changes_restart_reason_and_run_bounds(memory):
    agent = _scripted_agent(2, ["FAILED", "HEALTHY", "SUCCEEDED"])
    agent.run()
    names = [e.name for e in memory.events() if e.name.startswith("elastiscope.")]
    assert names[0] == "elastiscope.agent.run_start" and names[-1] == "elastiscope.agent.run_end"
    states = [e.metadata["state"] for e in memory.events() if e.name == "elastiscope.agent.state_change"]
    assert states == ["HEALTHY", "FAILED", "STOPPED", "HEALTHY", "SUCCEEDED"]
    restarts = [e.metadata for e in memory.events() if e.name == "elastiscope.agent.restart"]
    assert [(r["reason"], r["remaining_restarts"], r["failed_ranks"]) for r in restarts] == [("failure", 1, "[0]")]
    end = memory.events()[-1]
    assert end.metadata["state"] == "SUCCEEDED" and end.metadata["agent_restarts"] == 1


def test_agent_emits_rendezvous_result_with_world_sizes(memory):
    agent = _scripted_agent(0, ["SUCCEEDED"])
    agent.run()
    (rdzv,) = [e for e in memory.events() if e.name == "elastiscope.rendezvous.complete"]
    md = rdzv.metadata
    assert (md["group_rank"], md["group_world_size"], md["world_size"], md["previous_world_size"]) == (0, 1, 2, -1)


def test_event_metadata_values_are_scalars(memory):
    _scripted_agent(1, ["FAILED", "SUCCEEDED"]).run()
    for ev in memory.events():
        for v in ev.metadata.values():
            assert v is None or isinstance(v, (str, int, float, bool)), (ev.name, v)
