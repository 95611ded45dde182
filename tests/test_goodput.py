"""The goodput split's rules on made-up timestamps (agent/goodput_ledger.py), and what the
view publishes (agent/goodput.py). The real-agent acceptance is in test_goodput_run.py."""

from __future__ import annotations

import pytest

from agent.goodput import GoodputView
from agent.goodput_ledger import PRODUCTIVE, GoodputLedger
from telemetry import names

T0 = 1_000_000.0


def _sum(seconds):
    return sum(seconds.values())


def _nonzero(seconds):
    return {k: round(v, 6) for k, v in seconds.items() if v}


def test_a_run_without_failure_is_rendezvous_startup_productive_and_shutdown():
    ledger = GoodputLedger(T0)
    ledger.attempt_started(T0 + 2)  # rendezvous until the launch
    ledger.progress(T0 + 3, None, None, 0)  # nothing yet: start-up so far
    assert ledger.totals[names.BADPUT_STARTUP] == 1
    assert ledger.ratio() is None  # nothing reported: no claim
    assert ledger.progress(T0 + 6, T0 + 5, T0 + 5.5, 2, 2, 1)  # first step at 5
    assert not ledger.progress(T0 + 12, T0 + 5, T0 + 11, 20, 20, 1)
    ledger.finish(T0 + 13)
    assert _nonzero(ledger.totals) == {names.BADPUT_RENDEZVOUS: 2, names.BADPUT_STARTUP: 3,
                                       PRODUCTIVE: 6, names.BADPUT_SHUTDOWN: 2}
    assert ledger.ratio() == pytest.approx(6 / 13)


def test_restart_spans_the_failure_to_the_first_step_after_it_and_redone_steps_are_lost():
    ledger = GoodputLedger(T0)
    ledger.attempt_started(T0 + 1)
    ledger.progress(T0 + 4, T0 + 2, T0 + 3.5, 46, 46, 1)  # 46 steps from 2 to 3.5
    ledger.interrupted(T0 + 3.75, names.RESTART_FAILURE)
    closed = ledger.close_attempt()
    assert closed.seconds[names.BADPUT_LOST_PROGRESS] == pytest.approx(0.25)  # the step in flight
    ledger.attempt_started(T0 + 5)
    # Resumed from step 40: the first step (global 41) ends at 6, then 10 steps a second.
    ledger.progress(T0 + 6.2, T0 + 6, T0 + 6.1, 2, 42, 41)
    second = ledger.current
    assert second.seconds[names.BADPUT_RESTART] == pytest.approx(6 - 3.75)
    ledger.progress(T0 + 8, T0 + 6, T0 + 7.9, 20, 60, 41)
    ledger.finish(T0 + 8)
    # Global 41 -> 46 (5 steps of the 19 from 41 to 60) were redone after the first step.
    assert second.seconds[names.BADPUT_LOST_PROGRESS] == pytest.approx(1.9 * 5 / 19)
    assert second.redone_steps() == 6
    assert _sum(ledger.totals) == pytest.approx(8)
    assert sum(_sum(a.seconds) for a in ledger.attempts) == pytest.approx(8)


def test_a_membership_restart_is_rendezvous_badput():
    ledger = GoodputLedger(T0)
    ledger.attempt_started(T0)
    ledger.progress(T0 + 2, T0 + 1, T0 + 2, 5)
    ledger.interrupted(T0 + 2, names.RESTART_MEMBERSHIP)
    ledger.attempt_started(T0 + 4)
    ledger.progress(T0 + 5, T0 + 5, T0 + 5, 1)
    ledger.finish(T0 + 5)
    assert ledger.attempts[1].seconds[names.BADPUT_RENDEZVOUS] == pytest.approx(3)
    assert ledger.totals[names.BADPUT_RESTART] == 0


def test_stalls_reported_by_the_hang_detection_are_not_productive():
    ledger = GoodputLedger(T0)
    ledger.attempt_started(T0)
    ledger.progress(T0 + 1, T0 + 1, T0 + 1, 1)
    ledger.stalled(T0 + 2, T0 + 7)
    ledger.progress(T0 + 9, T0 + 1, T0 + 9, 3)
    ledger.stalled(T0 + 9.5, T0 + 11)  # then the hang detection restarts the group
    ledger.interrupted(T0 + 11, "stall")
    ledger.attempt_started(T0 + 12)
    ledger.progress(T0 + 14, T0 + 13, T0 + 13, 1)
    ledger.finish(T0 + 14)
    assert ledger.totals[names.BADPUT_STALL] == pytest.approx(5 + 1.5)
    assert ledger.totals[names.BADPUT_LOST_PROGRESS] == pytest.approx(0.5)
    assert ledger.totals[names.BADPUT_RESTART] == pytest.approx(2)  # stall restart -> first step
    assert ledger.totals[PRODUCTIVE] == pytest.approx(3)


def test_a_run_that_never_reports_claims_no_goodput():
    published = []
    clock = iter([T0, T0 + 1, T0 + 9]).__next__
    view = GoodputView("trainer", lambda kind, **md: published.append((kind, md)), clock=clock)
    view.run_started()
    view.attempt_started([0, 1])
    view.polled(T0 + 5)
    fields = view.run_ended()
    assert fields["progress_reported"] is False and fields["goodput_ratio"] is None
    assert fields["wall_seconds"] == 9
    assert view.summary() == {"goodput_ratio": None, "progress_reported": False}
    assert [kind for kind, _ in published] == [names.ATTEMPT_GOODPUT]


def test_the_totals_land_on_the_goodput_series_from_zero():
    from telemetry.records import Event, EventSource, MetricPoint
    from telemetry.sinks.prometheus import PrometheusSink

    sink = PrometheusSink()
    registry = sink.registry
    sink.emit(Event(names.RUN_START, EventSource.AGENT, metadata={"role": "r", "max_restarts": 1}))
    for reason in names.BADPUT_REASONS:  # at 0 from the run's start, so increase() sees the first
        assert registry.get_sample_value("elastiscope_badput_seconds_total", {"role": "r", "reason": reason}) == 0
    assert registry.get_sample_value("elastiscope_productive_seconds_total", {"role": "r"}) == 0
    assert registry.get_sample_value("elastiscope_goodput_ratio", {"role": "r"}) is None
    for name, value in (("workers.r.goodput.productive_seconds", 6.0),
                        ("workers.r.goodput.badput_seconds.restart", 2.5),
                        ("workers.r.goodput.ratio", 0.6)):
        sink.emit(MetricPoint(0.0, "torchelastic", name, value))
    assert registry.get_sample_value("elastiscope_productive_seconds_total", {"role": "r"}) == 6
    assert registry.get_sample_value("elastiscope_badput_seconds_total", {"role": "r", "reason": "restart"}) == 2.5
    assert registry.get_sample_value("elastiscope_goodput_ratio", {"role": "r"}) == 0.6


def test_the_view_publishes_totals_once_a_step_is_reported(monkeypatch):
    points = {}
    monkeypatch.setattr("agent.goodput.put_metric", lambda name, value: points.__setitem__(name, value))
    published = []
    now = [T0]
    view = GoodputView("r", lambda kind, **md: published.append((kind, md)), clock=lambda: now[0])
    view.run_started()
    now[0] = T0 + 1
    view.attempt_started([0])
    view.polled(T0 + 2)
    assert points == {}  # nothing reported yet: nothing claimed

    class Snap:  # the fields of a ProgressSnapshot the view reads
        steps, first_end, last_end, global_step = 3, T0 + 3, T0 + 4, 3

    view.observe(0, None, Snap(), T0 + 5)
    view.polled(T0 + 5)
    assert points["workers.r.goodput.productive_seconds"] == pytest.approx(1)
    assert points["workers.r.goodput.badput_seconds.startup"] == pytest.approx(2)
    assert points["workers.r.goodput.ratio"] == pytest.approx(1 / 4)
    (kind, md), = published
    assert kind == names.FIRST_STEP and md["attempt"] == 0 and md["launch_to_first_step_s"] == 2
    now[0] = T0 + 6
    fields = view.run_ended()
    assert fields["badput_shutdown_seconds"] == pytest.approx(2) and fields["wall_seconds"] == 6


def test_a_bug_in_the_accounting_never_reaches_the_agents_run_loop():
    def broken_clock():
        raise RuntimeError("boom")

    view = GoodputView("r", lambda kind, **md: None, clock=broken_clock)
    view.run_started()  # logged, not raised
    view.attempt_started([0])
    view.polled(T0)
    assert view.run_ended() == {}
