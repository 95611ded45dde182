"""Run a function right after a module is first imported, without importing it ourselves.

The step hook and the forward timing both need a torch module, and must not load torch before
the script does (a script that never imports torch must never pay for it). ``when_imported``
puts one finder first on ``sys.meta_path``: it finds nothing itself; for a watched name it asks
the other finders and wraps the loader, so the function runs once the module has executed. Every
other import pays one dictionary look-up, and the finder leaves ``sys.meta_path`` once nothing
is left to watch.
"""

from __future__ import annotations

import sys
from typing import Callable

__all__ = ["when_imported"]


def when_imported(name: str, action: Callable[[object], None]) -> None:
    """Call ``action(module)`` once ``name`` has been imported: now if it already is. Asking
    twice for the same action before the import runs it once."""
    module = sys.modules.get(name)
    if module is not None:
        _run(action, module)
        return
    watcher = next((f for f in sys.meta_path if isinstance(f, _ImportWatcher)), None)
    if watcher is None:
        watcher = _ImportWatcher()
        sys.meta_path.insert(0, watcher)
    actions = watcher.actions.setdefault(name, [])
    if action not in actions:
        actions.append(action)


def _run(action: Callable[[object], None], module: object) -> None:
    try:
        action(module)
    except Exception:  # telemetry never breaks the job: the feature is simply off
        pass


class _ImportWatcher:
    """A meta path finder that finds nothing itself: for a watched name it asks the other
    finders, and wraps the loader so the actions run once the module has executed."""

    def __init__(self) -> None:
        self.actions: dict[str, list[Callable[[object], None]]] = {}

    def find_spec(self, name, path, target=None):
        if name not in self.actions:
            return None
        actions = self.actions.pop(name)
        if not self.actions:  # nothing left to watch: out of every later import's way
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None and finder is not self else None
            if spec is not None and spec.loader is not None:
                spec.loader = _ActingLoader(spec.loader, actions)
                return spec
        return None


class _ActingLoader:
    """Delegates to the real loader; runs the actions after executing the module."""

    def __init__(self, loader, actions: list[Callable[[object], None]]) -> None:
        self._loader = loader
        self._actions = actions

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        for action in self._actions:
            _run(action, module)

    def __getattr__(self, name):
        return getattr(self._loader, name)
