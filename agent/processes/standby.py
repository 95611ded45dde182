"""Warm standbys: Python interpreters started ahead of a restart, waiting to become workers.

For workers that are this interpreter running a script (or ``-m`` module), the spawner can
start interpreters ahead of a restart (same executable, same flags) that wait on a pipe. A
restart hands each its environment, log files and argv, and it runs the program in a clean
``__main__`` at once (:mod:`agent.processes.standby_boot`): interpreter start-up (50+ ms
each, all competing for the same cores) leaves the restart's critical path. See
:func:`python_invocation` for what qualifies.

A standby may also *preload* modules (``import torch`` and what a DDP job's first step
imports: seconds of a restart) before it waits. What those modules read from the environment
at import (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``TORCH_*``, ``PYTORCH_*``,
``TORCHDYNAMO_*``, ``TORCHINDUCTOR_*``, ``CUDA_VISIBLE_DEVICES``, ``LD_PRELOAD``, the
``PYTHON*`` variables the interpreter reads at start-up...) must be what the worker's own
environment says, so a standby starts with the worker's environment minus the values that
change with every attempt and rank (:data:`ATTEMPT_VARIABLES`, which no preloaded module
reads at import), and a standby is taken only by a worker whose environment, those values
apart, is the one the standby started with (:func:`standby_env`).
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
from elastiscope.progress_layout import CHANNEL_ENV
from elastiscope.stack_dump import STACK_FILE_ENV

if TYPE_CHECKING:
    from agent.processes.spawner_client import ProgramSpawner
    from agent.processes.workers import WorkerLaunch

__all__ = [
    "ATTEMPT_VARIABLES",
    "PythonInvocation",
    "python_invocation",
    "shared_invocation",
    "standby_argv",
    "standby_env",
    "standby_job",
    "StandbyPool",
]

logger = logging.getLogger(__name__)

# The worker variables the agent sets anew for every attempt and rank (torchrun's, plus the
# error file, the trace context, the progress record and the stack dump's file). A standby starts without them and
# gets them with its job; every other variable must match (see the module docstring).
ATTEMPT_VARIABLES = frozenset({
    "RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "WORLD_SIZE", "GROUP_WORLD_SIZE",
    "ROLE_WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_ERROR_FILE", "TRACEPARENT", CHANNEL_ENV,
    STACK_FILE_ENV,
})


def standby_env(worker_env: dict[str, str]) -> dict[str, str]:
    """A worker's complete environment without its per-attempt values: what its standby
    starts with, and what a standby must have started with to become that worker."""
    return {k: v for k, v in worker_env.items() if k not in ATTEMPT_VARIABLES}


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


def standby_argv(invocation: PythonInvocation, preload: tuple[str, ...] = ()) -> list[str]:
    """The command of a standby for ``invocation`` that imports ``preload`` while it waits;
    the spawner appends the job fd to it."""
    return [invocation.executable, *invocation.flags, "-c", _STANDBY_LOADER, standby_boot.__file__,
            ",".join(preload)]


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
    the one it was started with, and whose environment, per-attempt values apart, is the one
    it started with (:func:`standby_env`); otherwise it is dismissed and the worker starts
    cold. Standbys for the same command but another preload set or environment replace the
    waiting ones.
    """

    def __init__(self, spawner: ProgramSpawner) -> None:
        self._spawner = spawner
        self._waiting: list[tuple[int, dict[str, str]]] = []  # (pid, its environment), oldest first
        self._argv: list[str] | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def pids(self) -> list[int]:
        """The waiting standbys' pids, oldest first (a copy)."""
        return [pid for pid, _ in self._waiting]

    @property
    def preload(self) -> tuple[str, ...]:
        """The modules the waiting standbys import ahead (empty when none wait)."""
        if not self._waiting or self._argv is None:
            return ()
        return tuple(m for m in self._argv[-1].split(",") if m)

    def fill(self, invocation: PythonInvocation, envs: list[dict[str, str]],
             preload: tuple[str, ...] = ()) -> None:
        """Have one standby waiting per environment in ``envs`` (each a worker's complete
        environment; see :func:`standby_env`), each importing ``preload`` as it waits."""
        argv = standby_argv(invocation, preload)
        wanted = [standby_env(env) for env in envs]
        if argv != self._argv:
            self.dismiss()
        self._argv = argv
        # Keep the waiting standbys that some wanted environment still matches.
        keep, spare = [], list(self._waiting)
        missing = []
        for env in wanted:
            match = next((w for w in spare if w[1] == env), None)
            if match is None:
                missing.append(env)
            else:
                spare.remove(match)
                keep.append(match)
        self._waiting = keep
        self._spawner.dismiss([pid for pid, _ in spare])
        if not missing:
            return
        display = [invocation.script] if invocation.script else ["-m", invocation.module]
        requests = [{"argv": argv, "display": [*display, *invocation.args], "env": env, "cwd": os.getcwd()}
                    for env in missing]
        for env, result in zip(missing, self._spawner.start_standbys(requests), strict=True):
            if result[0] == "ok":
                self._waiting.append((result[1], env))
            else:
                logger.warning("could not start a standby interpreter: %s", result[1])

    def take(self, invocation: PythonInvocation, env: dict[str, str]) -> int | None:
        """The pid of a standby that can become the worker of ``invocation`` with the complete
        environment ``env``, or None (then it starts cold)."""
        if not self._waiting or self._argv is None:
            return None
        if standby_argv(invocation)[:-1] != self._argv[:-1]:
            self.dismiss()
            return None
        wanted = standby_env(env)
        for i, (pid, started_env) in enumerate(self._waiting):
            if started_env == wanted:
                del self._waiting[i]
                return pid
        return None

    def dismiss(self) -> None:
        waiting, self._waiting = self._waiting, []
        self._spawner.dismiss([pid for pid, _ in waiting])
