"""The names torch's ``local_elastic_agent`` module offers besides the agent class, for code that
imports them from :mod:`agent.local` (which re-exports them).

``start_processes`` is looked up in :mod:`agent.local`'s namespace at every start, so patching
``agent.local.start_processes`` replaces the process layer there, as patching torch's name does
in torch's agent.
"""

from __future__ import annotations

from typing import Any

from agent.processes import ProgramSpawner, StandbyPool, WorkerLaunch, WorkerSet

__all__ = [
    "TORCHELASTIC_ENABLE_FILE_TIMER",
    "TORCHELASTIC_HEALTH_CHECK_PORT",
    "TORCHELASTIC_TIMER_FILE",
    "TORCHELASTIC_UNINTERRUPTIBLE_STATE_TIMEOUT",
    "start_processes",
]

# The environment variables torch's module names, under the same names, for code that imports
# them from here. Workers inherit the agent's environment, so a TORCHELASTIC_TIMER_FILE or
# TORCHELASTIC_HEALTH_CHECK_PORT set for the agent reaches them as it does under torch. This
# agent starts neither torch's FileTimerServer nor its health-check server: its liveness is
# the endpoint's /healthz, and a stuck worker is what the progress channel shows.
TORCHELASTIC_ENABLE_FILE_TIMER = "TORCHELASTIC_ENABLE_FILE_TIMER"
TORCHELASTIC_HEALTH_CHECK_PORT = "TORCHELASTIC_HEALTH_CHECK_PORT"
TORCHELASTIC_TIMER_FILE = "TORCHELASTIC_TIMER_FILE"
TORCHELASTIC_UNINTERRUPTIBLE_STATE_TIMEOUT = "TORCHELASTIC_UNINTERRUPTIBLE_STATE_TIMEOUT"


def start_processes(
    launches: list[WorkerLaunch],
    spawner: ProgramSpawner | None = None,
    mp_context: Any = None,
    standbys: StandbyPool | None = None,
) -> WorkerSet:
    """Start one attempt's workers: the agent's one call into the process layer.

    torch's agent starts its workers through ``start_processes`` in its module, and tests
    patch that name to stand in for real processes. This agent looks the name up here at
    every start in the same way, so patching ``agent.local.start_processes`` replaces the
    process layer too. The arguments are the agent's prepared launches (not torch's
    ``name, entrypoint, args, envs, logs_specs, ...``); a stand-in is used as torch uses
    its ``PContext``: ``pids()`` for the worker ids, and ``close()`` once the attempt is over
    (after ``stop(death_sig, grace)``). Only a real ``WorkerSet`` is sampled for CPU and memory.
    """
    return WorkerSet.start(launches, spawner=spawner, mp_context=mp_context, standbys=standbys)
