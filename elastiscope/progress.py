"""Report training progress to the Elastiscope agent: steps, the global step, checkpoints and
a few named scalars. A no-op outside an agent; imports neither torch nor the agent::

    from elastiscope import progress

    progress.set_global_step(resumed_at)   # after loading a checkpoint (or checkpoint_loaded)
    for batch in data:
        ...
        progress.step()                    # one step ended; the optimizer hook then stands aside
        progress.scalar("loss", loss_value)
    progress.checkpoint_saved(step)

Every call is a few stores into the worker's shared-memory record (no system call after the
first, which maps the record); the agent reads it at its own pace.
"""

from __future__ import annotations

from elastiscope import progress_layout
from elastiscope.progress_channel import channel

__all__ = ["step", "set_global_step", "checkpoint_saved", "checkpoint_loaded", "scalar", "enabled"]


def enabled() -> bool:
    """True when an agent reads this worker's progress."""
    return channel.writer() is not None


def step(global_step: int | None = None) -> None:
    """One training step ended now. From the first call on, only these calls count steps (an
    optimizer's ``step()`` no longer does, and the steps it counted before are dropped). ``global_step``: the step's number, if the script
    keeps one (it then need not call ``set_global_step``)."""
    writer = channel.writer()
    if writer is None:
        return
    if not writer.flags & progress_layout.F_EXPLICIT_STEPS:
        # The script counts its own steps from now on: what the optimizer hook counted before
        # (this very step, typically) is dropped, so no step counts twice.
        writer.set_flag(progress_layout.F_EXPLICIT_STEPS)
        writer.forget_steps()
    if global_step is not None:
        writer.set_global_step(int(global_step) - 1)
    writer.step()


def set_global_step(step: int) -> None:
    """The global step reached so far (e.g. the step a resumed run starts from); the steps
    that follow count on from it."""
    writer = channel.writer()
    if writer is not None:
        if not writer.flags & progress_layout.F_EXPLICIT_GLOBAL:
            writer.set_flag(progress_layout.F_EXPLICIT_GLOBAL)
        writer.set_global_step(int(step))


def checkpoint_saved(step: int) -> None:
    """A checkpoint of global step ``step`` was saved."""
    writer = channel.writer()
    if writer is not None:
        writer.checkpoint(False, int(step))


def checkpoint_loaded(step: int) -> None:
    """A checkpoint of global step ``step`` was loaded: the global step is ``step`` now."""
    writer = channel.writer()
    if writer is not None:
        writer.checkpoint(True, int(step))
        set_global_step(step)


def scalar(name: str, value: float) -> None:
    """A named value of this rank, exported as a gauge (e.g. ``loss``, ``samples_per_second``,
    ``tokens_per_second``). At most four names per worker, each of lower-case letters, digits
    and ``_``, up to 31 long; others are ignored (the label set stays bounded)."""
    writer = channel.writer()
    if writer is not None:
        writer.scalar(name, value)
