"""elastiscope.import_watch: a function runs right after a module's first import, never earlier,
and the watcher leaves sys.meta_path once nothing is left to watch."""

import sys

import pytest

from elastiscope.import_watch import when_imported


@pytest.fixture
def package(tmp_path, monkeypatch):
    """Two fresh top-level modules on sys.path (unique names: imports are process-wide)."""
    names = [f"watched_{id(tmp_path)}_{i}" for i in range(2)]
    for name in names:
        (tmp_path / f"{name}.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = list(sys.meta_path)
    yield names
    sys.meta_path[:] = before
    for name in names:
        sys.modules.pop(name, None)


def watchers():
    return [f for f in sys.meta_path if type(f).__name__ == "_ImportWatcher"]


def test_actions_run_after_the_module_executes_and_the_watcher_then_leaves(package):
    first, second = package
    seen = []
    when_imported(first, lambda module: seen.append((module.__name__, module.VALUE)))
    when_imported(second, lambda module: seen.append((module.__name__, module.VALUE)))
    assert seen == [] and len(watchers()) == 1  # one watcher for every name
    __import__(first)
    assert seen == [(first, 42)] and len(watchers()) == 1
    __import__(second)
    assert seen == [(first, 42), (second, 42)] and watchers() == []
    assert sys.modules[first].__spec__.loader.__class__.__name__ != "_ActingLoader"


def test_a_module_already_imported_gets_the_action_at_once(package):
    first, _ = package
    __import__(first)
    seen = []
    when_imported(first, seen.append)
    assert seen == [sys.modules[first]] and watchers() == []


def test_the_same_action_twice_runs_once_and_a_failing_one_breaks_nothing(package):
    first, _ = package
    seen = []

    def action(module):
        seen.append(module)

    def broken(module):
        raise RuntimeError("telemetry must never break the import")

    when_imported(first, action)
    when_imported(first, action)
    when_imported(first, broken)
    module = __import__(first)
    assert seen == [module] and module.VALUE == 42
