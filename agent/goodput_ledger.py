"""A run's wall time split into productive training and badput by reason: plain accounting on
timestamps (seconds since the epoch: the agent's clock and the workers' step times, one host),
fed by :mod:`agent.goodput`. No clock of its own, so tests drive it with any times.

One cursor walks from the run's start to its end; every stretch it passes goes to exactly one
bucket, so the buckets add up to the wall time by construction. The rules (docs/operations.md
says the same for people):

* an attempt's **first step** is the end of the first step any of its local workers reported
  (the workers' own timestamp); its **last step** the latest step end reported;
* run start -> the first attempt's launch: ``rendezvous``; launch -> its first step:
  ``startup``;
* an attempt is **interrupted** at the failure (the first failed worker's exit time) or at the
  decision to restart for a membership change; interruption -> the next attempt's first step:
  ``restart`` after a failure (a stall, later), ``rendezvous`` after a membership change;
* first step -> last step: ``productive``, less the ``stall`` intervals the hang detection
  reports (:meth:`GoodputLedger.stalled`) and less ``lost_progress``: after a resume, the
  stretch in which the global step climbs back to the highest global step reached before
  (split in proportion to global steps between two readings); the first redone step itself
  lies in the restart span, which ends at the end of that step;
* last step -> interruption: ``lost_progress`` (the step in flight, cut short);
* last step (or the interruption, when no restart follows) -> run end: ``shutdown``.

An attempt owns the time from the previous attempt's interruption (the run's start, for the
first) to its own (the run's end, for the last), so attempts split the run too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from telemetry import names

__all__ = ["PRODUCTIVE", "AttemptAccount", "GoodputLedger", "bucket_after"]

PRODUCTIVE = "productive"
BUCKETS = (PRODUCTIVE, *names.BADPUT_REASONS)

# The badput of an interruption -> the first step after it. Reasons not listed (a stall
# restart, when the hang detection adds it) count as restart.
_BUCKET_AFTER = {names.RESTART_FAILURE: names.BADPUT_RESTART,
                 names.RESTART_MEMBERSHIP: names.BADPUT_RENDEZVOUS}


def bucket_after(reason: str | None) -> str:
    return _BUCKET_AFTER.get(reason or "", names.BADPUT_RESTART)


@dataclass
class AttemptAccount:
    """One attempt's share of the run: its seconds per bucket and what its workers reported."""

    number: int
    launched: float
    pre_bucket: str  # where the time before its first step goes
    follows_reason: str | None = None  # the interruption this attempt restarts after
    follows_at: float | None = None
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BUCKETS, 0.0))
    first_step: float | None = None
    last_step: float | None = None
    steps: int = 0
    first_global: int | None = None  # the global step of its first step
    global_step: int | None = None
    redo_until: int | None = None  # the highest global step of the attempts before
    interrupted_at: float | None = None
    interrupted_by: str | None = None
    stalls: list[tuple[float, float]] = field(default_factory=list)
    closed: bool = False
    _global_at_cursor: int | None = None

    @property
    def wall_seconds(self) -> float:
        return sum(self.seconds.values())

    def redone_steps(self) -> int:
        if self.redo_until is None or self.first_global is None or self.global_step is None:
            return 0
        return max(0, min(self.global_step, self.redo_until) - self.first_global + 1)

    def steps_per_second(self) -> float | None:
        if self.steps < 2 or self.first_step is None or self.last_step is None:
            return None
        span = self.last_step - self.first_step
        return (self.steps - 1) / span if span > 0 else None


class GoodputLedger:
    """The run's split, attempt by attempt; ``totals`` per bucket (seconds)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.cursor = started
        self.ended: float | None = None
        self.totals = dict.fromkeys(BUCKETS, 0.0)
        self.attempts: list[AttemptAccount] = []
        self.reported = False  # a worker of the run reported a step
        self._high_water: int | None = None

    @property
    def current(self) -> AttemptAccount | None:
        return self.attempts[-1] if self.attempts else None

    def ratio(self) -> float | None:
        """Productive share of the time accounted so far; None until a step was reported."""
        wall = self.cursor - self.started
        return self.totals[PRODUCTIVE] / wall if self.reported and wall > 0 else None

    # ---- what happens ---------------------------------------------------------------------

    def attempt_started(self, at: float) -> AttemptAccount:
        """An attempt's workers are launched at ``at``."""
        previous = self.current
        if previous is None:
            attempt = AttemptAccount(0, at, names.BADPUT_STARTUP)
            gap = names.BADPUT_RENDEZVOUS
        else:
            if previous.interrupted_at is None and not previous.closed:
                # Restarted without a word of why (not through the local agent's paths).
                previous.interrupted_at = self.cursor
            self.close_attempt()
            if previous.global_step is not None:
                self._high_water = max(previous.global_step, self._high_water or previous.global_step)
            reason = previous.interrupted_by
            gap = bucket_after(reason)
            attempt = AttemptAccount(len(self.attempts), at, gap, reason, previous.interrupted_at)
        attempt.redo_until = self._high_water
        self.attempts.append(attempt)
        self._account(gap, at)
        return attempt

    def progress(self, now: float, first_step: float | None, last_step: float | None, steps: int,
                 global_step: int | None = None, first_global: int | None = None) -> bool:
        """What the current attempt's workers reported by ``now``: its first and last step
        ends (None: no step yet), its steps, its global step and the global step of its first
        step (None: not reported). True when this reading brought the attempt's first step."""
        a = self.current
        if a is None or a.closed:
            return False
        limit = now if a.interrupted_at is None else a.interrupted_at
        if first_step is None or last_step is None or (a.first_step is None and first_step > limit):
            if a.interrupted_at is None:
                self._account(a.pre_bucket, now)
            return False
        a.steps, a.last_step = steps, last_step
        if global_step is not None:
            a.global_step = global_step
        newly = a.first_step is None
        if newly:
            a.first_step = min(max(first_step, self.cursor), limit)
            a.first_global = a._global_at_cursor = first_global
            self._account(a.pre_bucket, a.first_step)
            self.reported = True
        self._account_training(a, min(last_step, limit))
        return newly

    def interrupted(self, at: float, reason: str) -> None:
        """The current attempt's workers failed (``at``: the first exit) or are being stopped
        to re-form the group; the first call of an attempt counts."""
        a = self.current
        if a is not None and a.interrupted_at is None and not a.closed:
            a.interrupted_at, a.interrupted_by = max(at, self.cursor), reason

    def stalled(self, since: float, until: float) -> None:
        """The hang detection's hook: the current attempt's workers made no progress from
        ``since`` to ``until``. Counted as stall instead of productive (or in-flight) time, for
        the part not yet accounted: report a stall while it lasts or as soon as it ends."""
        a = self.current
        if a is not None and until > since:
            a.stalls.append((since, until))

    def close_attempt(self) -> AttemptAccount | None:
        """Account an interrupted attempt up to its interruption (its workers' last steps read);
        returns it, or None when there is none to close (an attempt that was not interrupted
        runs on to the run's end: :meth:`finish` closes it)."""
        a = self.current
        if a is None or a.closed or a.interrupted_at is None:
            return None
        if a.first_step is None:
            self._account(a.pre_bucket, a.interrupted_at)
        else:
            self._account_idle(a, a.interrupted_at, names.BADPUT_LOST_PROGRESS)
        a.closed = True
        return a

    def finish(self, at: float) -> AttemptAccount | None:
        """The run ended at ``at``: the rest of the time is accounted. Returns the last attempt
        if this closed it (it was not closed before)."""
        self.ended = at
        a = self.current
        if a is None:
            self._account(names.BADPUT_RENDEZVOUS, at)  # never launched: it never got past that
            return None
        closing = not a.closed
        self.close_attempt()
        if a.first_step is None and not a.closed:
            self._account(a.pre_bucket, at)
        else:
            self._account_idle(a, at, names.BADPUT_SHUTDOWN)
        a.closed = True
        return a if closing else None

    # ---- the cursor -------------------------------------------------------------------------

    def _account(self, bucket: str, until: float) -> None:
        if until <= self.cursor:
            return
        seconds = until - self.cursor
        self.totals[bucket] += seconds
        if self.attempts:
            self.attempts[-1].seconds[bucket] += seconds
        self.cursor = until

    def _stalled_seconds(self, a: AttemptAccount, until: float) -> float:
        start = self.cursor
        stalled = sum(max(0.0, min(until, e) - max(start, s)) for s, e in a.stalls)
        return min(stalled, until - start)  # overlapping reports count once at most

    def _account_idle(self, a: AttemptAccount, until: float, bucket: str) -> None:
        """After the last step: stall where the hang detection said so, ``bucket`` for the rest."""
        if until <= self.cursor:
            return
        stalled = self._stalled_seconds(a, until)
        self._split(until, {names.BADPUT_STALL: stalled, bucket: until - self.cursor - stalled})

    def _account_training(self, a: AttemptAccount, until: float) -> None:
        if until <= self.cursor:
            return
        stalled = self._stalled_seconds(a, until)
        rest = until - self.cursor - stalled
        lost = 0.0
        g0, g1, redo_until = a._global_at_cursor, a.global_step, a.redo_until
        if redo_until is not None and g0 is not None and g1 is not None and g0 < redo_until:
            # Global steps g0 -> g1 in this stretch; those up to redo_until were made before.
            share = (min(g1, redo_until) - g0) / (g1 - g0) if g1 > g0 else 1.0
            lost = rest * share
        a._global_at_cursor = g1
        self._split(until, {names.BADPUT_STALL: stalled, names.BADPUT_LOST_PROGRESS: lost,
                            PRODUCTIVE: rest - lost})

    def _split(self, until: float, parts: dict[str, float]) -> None:
        """Move the cursor to ``until``, the stretch shared out as ``parts`` says (the last part
        takes what rounding leaves, so the sum stays exact)."""
        items = [(bucket, s) for bucket, s in parts.items() if s > 0]
        for bucket, seconds in items[:-1]:
            self._account(bucket, self.cursor + seconds)
        if items:
            self._account(items[-1][0], until)
        self.cursor = max(self.cursor, until)
