"""Every ``optimizer.step()`` of a worker counted as a step, without a change to the script.

``install()`` (run by our ``sitecustomize`` at interpreter start-up, by a standby's boot, or by
a callable worker's body) does not import torch: it waits (``elastiscope.import_watch``) for
the script itself to import ``torch.optim.optimizer`` (``import torch`` does), and registers
torch's global optimizer step post hook right after that module has run. A script that never
imports torch never loads it, and pays one dictionary look-up per import. It also arranges the
forward timing the straggler view needs (``elastiscope.forward_timing``).

The hook also keeps a step count in the optimizer's first parameter group
(``elastiscope_step``): it is saved with the optimizer's ``state_dict()`` and restored by
``load_state_dict()``, so a run resumed from a checkpoint reports the right global step with
no code of its own.
"""

import os

from elastiscope import forward_timing
from elastiscope.import_watch import when_imported
from elastiscope.progress_channel import channel
from elastiscope.progress_layout import AUTO_STEPS_ENV, F_EXPLICIT_STEPS

__all__ = ["install", "auto_steps_enabled", "on_optimizer_step", "STEP_KEY"]

_WATCHED = "torch.optim.optimizer"
STEP_KEY = "elastiscope_step"


def auto_steps_enabled() -> bool:
    return os.environ.get(AUTO_STEPS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def install() -> None:
    """Arrange for optimizer steps to be counted once torch.optim is imported (idempotent)."""
    if not auto_steps_enabled():
        return
    when_imported(_WATCHED, _register)
    forward_timing.install()


def on_optimizer_step(optimizer, args, kwargs) -> None:
    """torch's optimizer step post hook: one step ended."""
    writer = channel.writer()
    if writer is None or writer.flags & F_EXPLICIT_STEPS:
        return
    try:
        group = optimizer.param_groups[0]
        count = group.get(STEP_KEY, 0) + 1
        group[STEP_KEY] = count
    except (AttributeError, IndexError, TypeError):
        count = None
    writer.step(count)


def _register(module) -> None:
    if not getattr(module, "_elastiscope_hooked", False):
        module.register_optimizer_step_post_hook(on_optimizer_step)
        module._elastiscope_hooked = True
