"""Every ``optimizer.step()`` of a worker counted as a step, without a change to the script.

``install()`` (run by our ``sitecustomize`` at interpreter start-up, by a standby's boot, or by
a callable worker's body) does not import torch: it puts a finder first on ``sys.meta_path``
that waits for the script itself to import ``torch.optim.optimizer`` (``import torch`` does),
and registers torch's global optimizer step post hook right after that module has run. A
script that never imports torch never loads it, and pays one string comparison per import.

The hook also keeps a step count in the optimizer's first parameter group
(``elastiscope_step``): it is saved with the optimizer's ``state_dict()`` and restored by
``load_state_dict()``, so a run resumed from a checkpoint reports the right global step with
no code of its own.
"""

import os
import sys

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
    module = sys.modules.get(_WATCHED)
    if module is not None:
        _register(module)
    elif not any(isinstance(f, _OptimizerWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _OptimizerWatcher())


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


class _OptimizerWatcher:
    """A meta path finder that finds nothing itself: for torch.optim.optimizer it asks the
    other finders, and wraps the loader so the hook is registered once the module has run."""

    def find_spec(self, name, path, target=None):
        if name != _WATCHED:
            return None
        sys.meta_path.remove(self)  # one module to watch: out of every later import's way
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


class _RegisteringLoader:
    """Delegates to the real loader; registers the step hook after executing the module."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        try:
            _register(module)
        except Exception:  # telemetry never breaks the job: no hook, no automatic steps
            pass

    def __getattr__(self, name):
        return getattr(self._loader, name)
