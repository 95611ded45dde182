"""agent.torch_patches: every patch goes in at once, only once, and comes out again."""

from __future__ import annotations

import logging

import torch.distributed.elastic.events as torch_events
import torch.distributed.elastic.events.handlers as torch_handlers
import torch.distributed.elastic.metrics as torch_metrics
import torch.distributed.elastic.rendezvous.c10d_rendezvous_backend as c10d_backend
import torch.distributed.elastic.rendezvous.dynamic_rendezvous as dynamic_rendezvous

from agent import torch_patches
from telemetry import Pipeline, set_pipeline
from telemetry.sink import Sink


def torchs_state():
    return (
        torch_metrics.api._default_metrics_handler,
        dict(torch_metrics.api._metrics_map),
        torch_handlers._log_handlers.get("dynamic_rendezvous"),
        dynamic_rendezvous.construct_and_record_rdzv_event,
        c10d_backend.construct_and_record_rdzv_event,
        dynamic_rendezvous._delay,
        dynamic_rendezvous.get_method_name,
    )


def test_apply_is_idempotent_and_remove_gives_torch_back_what_it_had():
    torch_patches.remove()
    before = torchs_state()
    assert not torch_patches.applied()
    assert torch_patches.apply()
    once = torchs_state()
    assert torch_patches.apply()
    assert torchs_state() == once  # nothing wrapped twice
    assert torch_patches.applied()
    assert all(a is not b for a, b in zip(before[2:], once[2:]))
    assert dynamic_rendezvous._delay.original is before[5]
    assert dynamic_rendezvous.construct_and_record_rdzv_event.original is torch_events.construct_and_record_rdzv_event
    torch_patches.remove()
    assert torchs_state() == before
    torch_patches.remove()  # a second removal is harmless
    assert torchs_state() == before


def test_a_users_torch_handler_and_the_pipeline_each_get_torchs_metrics_once():
    seen_by_user, seen_by_pipeline = [], []

    class UserHandler(torch_metrics.MetricHandler):
        def emit(self, data):
            seen_by_user.append(data.name)

    class Points(Sink):
        name, synchronous, events = "points", True, False

        def emit(self, point):
            seen_by_pipeline.append(point.name)

    previous_pipeline = set_pipeline(Pipeline([Points()]))
    torch_metrics.configure(UserHandler(), "my_group")
    try:
        torch_patches.apply()
        torch_patches.apply()
        torch_metrics.put_metric("custom.thing", 4, "my_group")
        handler = torch_metrics.getStream("my_group").handler
        assert isinstance(torch_patches.handler_behind_tap(handler), UserHandler)
    finally:
        torch_patches.remove()
        torch_metrics.configure(torch_metrics.NullMetricHandler(), "my_group")
        set_pipeline(previous_pipeline)
    assert seen_by_user == ["custom.thing"] and seen_by_pipeline == ["custom.thing"]


def test_the_rendezvous_log_line_still_reaches_the_handler_torch_had():
    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    torch_patches.remove()
    previous = torch_handlers._log_handlers["dynamic_rendezvous"]
    torch_handlers._log_handlers["dynamic_rendezvous"] = Keep()
    previous_pipeline = set_pipeline(Pipeline())
    try:
        torch_patches.apply()
        dynamic_rendezvous.construct_and_record_rdzv_event(
            run_id="r", message="hello", node_state=torch_events.NodeState.RUNNING, name="X.y")
    finally:
        torch_patches.remove()
        torch_handlers._log_handlers["dynamic_rendezvous"] = previous
        set_pipeline(previous_pipeline)
    assert len(lines) == 1 and '"message": "hello"' in lines[0] and "X.y" in lines[0]


def test_resetting_telemetry_takes_the_patches_out():
    from telemetry import state

    assert torch_patches.apply()
    state.reset()
    assert not torch_patches.applied()
    assert not isinstance(dynamic_rendezvous._delay, torch_patches.JoinJitterSwitch)
