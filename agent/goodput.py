"""Goodput: how much of the agent's run went into productive training, and where the rest went.

``GoodputView`` is a progress observer (:mod:`agent.progress`) plus the moments of the run only
the agent knows (its start and end, a failure, a membership restart). It feeds them to a
:class:`agent.goodput_ledger.GoodputLedger`, which holds the rules, and publishes:

* at poll pace, once a worker has reported a step, the running totals as put_metric points
  (``workers.<role>.goodput.productive_seconds``, ``...goodput.badput_seconds.<reason>``,
  ``...goodput.ratio``): before the first step nothing is known about the split, so nothing
  is claimed (a run whose workers never report shows "no progress reported", not 0 %);
* ``elastiscope.agent.first_step`` when an attempt's first step is seen (with the time since
  its launch and since the failure it restarts after);
* ``elastiscope.agent.attempt_goodput`` when an attempt's share is final;
* the run's totals, for the run_end event (:meth:`GoodputView.run_ended`).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable

from agent.goodput_ledger import PRODUCTIVE, AttemptAccount, GoodputLedger
from elastiscope.progress_layout import ProgressSnapshot
from telemetry import names
from telemetry.events import put_metric

__all__ = ["GoodputView", "goodput_fields", "Publish"]

logger = logging.getLogger(__name__)

# publish(kind, **metadata): an agent event of ``kind`` (the agent adds who is speaking).
Publish = Callable[..., None]


def _never_raises(default: Any = None) -> Callable:
    """The agent's run loop calls these: a bug in the accounting must not stop the job."""
    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except Exception:
                logger.warning("goodput accounting failed in %s; the job goes on", method.__name__,
                               exc_info=True)
                return default
        return guarded
    return wrap


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def goodput_fields(seconds: dict[str, float], reported: bool) -> dict[str, Any]:
    """The split as event metadata: ``wall_seconds``, ``productive_seconds``,
    ``badput_<reason>_seconds``, ``goodput_ratio`` (null when no step was reported) and
    ``progress_reported``."""
    wall = sum(seconds.values())
    fields: dict[str, Any] = {"wall_seconds": _round(wall), "productive_seconds": _round(seconds[PRODUCTIVE])}
    for reason in names.BADPUT_REASONS:
        fields[f"badput_{reason}_seconds"] = _round(seconds[reason])
    fields["goodput_ratio"] = _round(seconds[PRODUCTIVE] / wall, 4) if reported and wall > 0 else None
    fields["progress_reported"] = reported
    return fields


class GoodputView:
    """The agent's goodput accounting, one run at a time (``run_started`` ... ``run_ended``)."""

    def __init__(self, role: str, publish: Publish, clock: Callable[[], float] = time.time) -> None:
        self.role = role
        self._publish = publish
        self._clock = clock
        self._ledger: GoodputLedger | None = None
        self._snapshots: dict[int, ProgressSnapshot] = {}
        self._published: dict[str, float] = {}
        self._told: set[int] = set()  # attempts whose attempt_goodput event is out

    @property
    def ledger(self) -> GoodputLedger | None:
        return self._ledger

    # ---- the run's moments (agent/local.py) -----------------------------------------------

    @_never_raises()
    def run_started(self) -> None:
        self._ledger = GoodputLedger(self._clock())
        self._snapshots, self._published, self._told = {}, {}, set()

    @_never_raises()
    def interrupted(self, at: float, reason: str) -> None:
        """The current attempt failed (``at``: its first worker's exit) or is stopped to
        re-form the group (``reason``: a restart reason of telemetry.names)."""
        if self._ledger is not None:
            self._ledger.interrupted(at, reason)

    @_never_raises()
    def stalled(self, since: float, until: float) -> None:
        """The hang detection's hook (value 0 until it calls): the workers made no progress
        from ``since`` to ``until`` (epoch seconds); that time counts as ``stall`` badput. A
        restart it decides goes through ``interrupted(at, reason)``; a reason without a bucket
        of its own (``"stall"``) counts its interruption -> first step as ``restart``."""
        if self._ledger is not None:
            self._ledger.stalled(since, until)

    @_never_raises({})
    def run_ended(self) -> dict[str, Any]:
        """Account the rest of the run; the run_end event's goodput fields (empty without a run)."""
        ledger = self._ledger
        if ledger is None:
            return {}
        last = ledger.finish(self._clock())
        if last is not None:
            self._tell_attempt(last)
        self._publish_totals()
        return goodput_fields(ledger.totals, ledger.reported)

    @_never_raises()
    def summary(self) -> dict[str, Any] | None:
        """The ratio and whether progress was reported, for the CLI's last line (None: no run)."""
        ledger = self._ledger
        if ledger is None:
            return None
        return {"goodput_ratio": ledger.ratio(), "progress_reported": ledger.reported}

    # ---- ProgressObserver ----------------------------------------------------------------

    @_never_raises()
    def attempt_started(self, local_ranks: list[int]) -> None:
        if self._ledger is None:
            return
        self._snapshots = {}
        previous = self._ledger.current
        self._ledger.attempt_started(self._clock())
        if previous is not None:  # closed just now if attempt_ended did not (told once)
            self._tell_attempt(previous)

    @_never_raises()
    def observe(self, local_rank: int, previous: ProgressSnapshot | None,
                current: ProgressSnapshot, now: float) -> None:
        self._snapshots[local_rank] = current

    @_never_raises()
    def polled(self, now: float) -> None:
        self._advance(now)
        self._publish_totals()

    @_never_raises()
    def attempt_ended(self, last: dict[int, ProgressSnapshot | None]) -> None:
        if self._ledger is None:
            return
        self._snapshots.update({rank: snap for rank, snap in last.items() if snap is not None})
        self._advance(self._clock())
        closed = self._ledger.close_attempt()
        if closed is not None:
            self._tell_attempt(closed)
        self._publish_totals()

    # ---- inside -------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        ledger = self._ledger
        if ledger is None:
            return
        stepped = [s for s in self._snapshots.values() if s.steps > 0]
        if not stepped:
            ledger.progress(now, None, None, 0)
            return
        with_global = [s for s in stepped if s.global_step >= 0]
        newly = ledger.progress(
            now,
            first_step=min(s.first_end for s in stepped),
            last_step=max(s.last_end for s in stepped),
            steps=max(s.steps for s in stepped),
            global_step=max((s.global_step for s in with_global), default=None),
            first_global=min((s.global_step - s.steps + 1 for s in with_global), default=None),
        )
        if newly:
            self._tell_first_step(ledger.current)

    def _tell_first_step(self, a: AttemptAccount) -> None:
        after = a.first_step - a.follows_at if a.follows_at is not None else None
        self._publish(
            names.FIRST_STEP,
            attempt=a.number,
            first_step_time=_round(a.first_step),
            launch_to_first_step_s=_round(a.first_step - a.launched),
            interruption_reason=a.follows_reason,
            interruption_to_first_step_s=_round(after),
        )

    def _tell_attempt(self, a: AttemptAccount) -> None:
        if a.number in self._told:
            return
        self._told.add(a.number)
        self._publish(
            names.ATTEMPT_GOODPUT,
            attempt=a.number,
            ended_by=a.interrupted_by or "run_end",
            steps=a.steps,
            steps_per_second=_round(a.steps_per_second()),
            redone_steps=a.redone_steps(),
            **goodput_fields(a.seconds, a.first_step is not None),
        )

    def _publish_totals(self) -> None:
        """The running totals as put_metric points, once a step was reported; only changes."""
        ledger = self._ledger
        if ledger is None or not ledger.reported:
            return
        base = f"workers.{self.role}.goodput"
        values = {f"{base}.productive_seconds": ledger.totals[PRODUCTIVE]}
        for reason in names.BADPUT_REASONS:
            values[f"{base}.badput_seconds.{reason}"] = ledger.totals[reason]
        ratio = ledger.ratio()
        if ratio is not None:
            values[f"{base}.ratio"] = ratio
        for name, value in values.items():
            if self._published.get(name) != value:
                self._published[name] = value
                put_metric(name, value)
