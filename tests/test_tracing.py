"""Spans are a no-op until tracer hooks are installed; the hooks live in the state holder and
reset() takes them out."""

from __future__ import annotations

import contextlib

from telemetry import state, tracing


def test_without_hooks_span_is_a_null_context_and_there_is_no_traceparent():
    assert not tracing.enabled()
    with tracing.span("run", role="x") as sp:
        assert sp is None
    assert tracing.traceparent() is None


def test_installed_hooks_make_spans_and_traceparents():
    opened = []

    @contextlib.contextmanager
    def factory(name, attributes):
        opened.append((name, attributes))
        yield name

    tracing.set_tracer_hooks(factory, lambda: "00-abc-def-01")
    assert tracing.enabled()
    with tracing.span("rendezvous", role="trainer") as sp:
        assert sp == "rendezvous"
    assert opened == [("rendezvous", {"role": "trainer"})]
    assert tracing.traceparent() == "00-abc-def-01"


def test_hooks_that_raise_never_reach_the_agent():
    def broken(*args):
        raise RuntimeError("tracer broke")

    tracing.set_tracer_hooks(broken, broken)
    with tracing.span("run"):
        pass
    assert tracing.traceparent() is None


def test_clear_tracer_hooks_leaves_a_newer_tracer_in_place():
    def old_factory(name, attributes):
        return contextlib.nullcontext()

    def new_factory(name, attributes):
        return contextlib.nullcontext()

    tracing.set_tracer_hooks(new_factory, None)
    tracing.clear_tracer_hooks(old_factory)
    assert tracing.enabled()
    tracing.clear_tracer_hooks(new_factory)
    assert not tracing.enabled()


def test_reset_turns_tracing_off():
    tracing.set_tracer_hooks(lambda name, attributes: contextlib.nullcontext(), lambda: "tp")
    state.reset()
    assert not tracing.enabled() and tracing.traceparent() is None
