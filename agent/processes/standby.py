"""Warm standbys: Python interpreters started ahead of a restart, waiting to become workers.

For workers that are this interpreter running a script (or ``-m`` module), the spawner can
start interpreters ahead of a restart (same executable, same flags) that wait on a pipe. A
restart hands each its environment, log files and argv, and it runs the program in a clean
``__main__`` at once (:mod:`agent.processes.standby_boot`): interpreter start-up (50+ ms
each, all competing for the same cores) leaves the restart's critical path. See
:func:`python_invocation` for what qualifies.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.processes import standby_boot
from agent.python_cmdline import parse_python_args

if TYPE_CHECKING:
    from agent.processes.spawner_client import ProgramSpawner
    from agent.processes.workers import WorkerLaunch

__all__ = [
    "PythonInvocation",
    "python_invocation",
    "shared_invocation",
    "standby_argv",
    "standby_job",
    "StandbyPool",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PythonInvocation:
    """``python [flags] script args`` or ``python [flags] -m module args``, taken apart."""

    executable: str
    flags: tuple[str, ...]
    script: str | None
    module: str | None
    args: tuple[str, ...]


def python_invocation(entrypoint: Any, args: tuple) -> PythonInvocation | None:
    """How this worker runs Python, if it is this interpreter running a script or a module.

    Only ``sys.executable`` qualifies (the standby's boot code and the job's encoding are
    this interpreter's), with options that only tune the interpreter (``-c``, ``-`` and
    ``-i`` do not qualify). Anything else returns None and is always started cold.
    """
    if not isinstance(entrypoint, str) or not sys.executable:
        return None
    try:
        if os.path.realpath(entrypoint) != os.path.realpath(sys.executable):
            return None
    except OSError:
        return None
    command = parse_python_args(args)
    if not command.only_tunes:
        return None
    if command.module:
        return PythonInvocation(entrypoint, command.options, None, command.module, command.args)
    if command.script and command.script != "-":
        return PythonInvocation(entrypoint, command.options, command.script, None, command.args)
    return None


def shared_invocation(entrypoint: Any, args_per_worker: Iterable[tuple]) -> PythonInvocation | None:
    """The invocation of the first worker if every worker can run from the same standby
    command (same interpreter, same flags); None otherwise."""
    invocations = [python_invocation(entrypoint, args) for args in args_per_worker]
    if not invocations or any(i is None for i in invocations):
        return None
    if len({tuple(standby_argv(i)) for i in invocations}) != 1:
        return None
    return invocations[0]


# Runs the boot module from its cached bytecode in a namespace of its own (see its docstring),
# then its main(). The namespace's name is what ps shows a standby as.
_STANDBY_LOADER = (
    "import sys, _frozen_importlib_external as f; p = sys.argv[1]; "
    "n = {'__name__': '_elastiscope_standby', '__file__': p, '__builtins__': __builtins__}; "
    "exec(f.SourceFileLoader(n['__name__'], p).get_code(n['__name__']), n); n['main']()"
)


def standby_argv(invocation: PythonInvocation) -> list[str]:
    """The command of a standby for ``invocation``; the spawner appends the job fd to it."""
    return [invocation.executable, *invocation.flags, "-c", _STANDBY_LOADER, standby_boot.__file__]


def standby_job(invocation: PythonInvocation, launch: WorkerLaunch, env: dict, cwd: str) -> dict:
    """What a standby needs to become the worker of ``launch`` (read by the boot module)."""
    return {
        "cwd": cwd,
        "env": env,
        "stdout": launch.stdout,
        "stderr": launch.stderr,
        "script": invocation.script,
        "module": invocation.module,
        "args": list(invocation.args),
    }


class StandbyPool:
    """Standby interpreters waiting to become the next attempt's program workers.

    A standby is only used for a worker whose interpreter command (executable and flags) is
    the one it was started with, and only while the agent's environment is still the one it
    started in (the interpreter reads PYTHON* variables at start-up); otherwise the pool is
    dismissed and workers start cold.
    """

    def __init__(self, spawner: ProgramSpawner) -> None:
        self._spawner = spawner
        self._pids: list[int] = []
        self._argv: list[str] | None = None
        self._env: dict[str, str] | None = None

    def __len__(self) -> int:
        return len(self._pids)

    @property
    def pids(self) -> list[int]:
        """The waiting standbys' pids, oldest first (a copy)."""
        return list(self._pids)

    def fill(self, invocation: PythonInvocation, size: int) -> None:
        """Start standbys for ``invocation`` until ``size`` are waiting."""
        argv, env = standby_argv(invocation), dict(os.environ)
        if (argv, env) != (self._argv, self._env):
            self.dismiss()
        self._argv, self._env = argv, env
        missing = size - len(self._pids)
        if missing <= 0:
            return
        display = [invocation.script] if invocation.script else ["-m", invocation.module]
        request = {"argv": argv, "display": [*display, *invocation.args], "env": env, "cwd": os.getcwd()}
        for result in self._spawner.start_standbys([request] * missing):
            if result[0] == "ok":
                self._pids.append(result[1])
            else:
                logger.warning("could not start a standby interpreter: %s", result[1])

    def take(self, invocation: PythonInvocation) -> int | None:
        """The pid of a standby that can run ``invocation`` now, or None."""
        if not self._pids:
            return None
        if standby_argv(invocation) != self._argv or dict(os.environ) != self._env:
            self.dismiss()
            return None
        return self._pids.pop(0)

    def dismiss(self) -> None:
        pids, self._pids = self._pids, []
        self._spawner.dismiss(pids)
