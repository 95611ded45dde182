"""Process supervision for the local agent: spawn, exit watching, stop/kill, logs.

The pieces, each in a module of its own:

* :mod:`~agent.processes.spawner_client` (:class:`ProgramSpawner`) -- the agent's handle on a
  small helper process, :mod:`~agent.processes.spawner_process`, that forks program workers.
  Workers must die with the agent, which takes ``PR_SET_PDEATHSIG`` set in the child between
  fork and exec. Doing that from the agent itself means a full ``fork()`` of a process with
  torch mapped (about 14 ms per worker measured here, all on the restart's critical path);
  the helper is a bare interpreter that imports next to nothing (it lives as long as the
  job, so its size is paid all along) and starts a worker in about 2 ms. It also reaps the
  workers and reports each exit on a pipe the moment it happens.
* :mod:`~agent.processes.standby` (:class:`StandbyPool`) -- warm standbys: for workers that
  are Python scripts, interpreters started ahead of a restart that wait on a pipe and then
  become the workers (:mod:`~agent.processes.standby_boot`), so that interpreter start-up
  leaves the restart's critical path. What qualifies is :func:`python_invocation`'s to say.
* :mod:`~agent.processes.workers` (:class:`WorkerSet`) -- the workers of one attempt. It
  starts them (programs through the spawner, Python callables through ``multiprocessing``,
  running :mod:`~agent.processes.callable_worker`), learns of every exit through one selector
  (the spawner's report pipe and the callables' sentinels), so the agent hears about an exit
  within milliseconds whatever its monitor interval, and stops them (signal, grace period,
  SIGKILL).
* :mod:`~agent.processes.log_tee` (:class:`LogTee`) -- copies redirected log files to the
  console with a per-rank prefix.
* :mod:`~agent.processes.usage` (:func:`read_usage`, :func:`publish_usage`) -- CPU seconds and resident memory of a
  process, from ``/proc``.

No orphans: each worker asks the kernel for SIGKILL when its parent dies and then checks that
its parent is still the process that started it (the parent may have died before the request
took effect). The spawner does the same with the agent, so killing the agent takes down the
spawner and, through it, every program worker.

Nothing here imports torch: callable workers import this package when they boot.
"""

from agent.processes.log_tee import LogTee, TeeRoute
from agent.processes.spawner_client import ProgramSpawner, spawner_command
from agent.processes.spawner_process import die_with_parent
from agent.processes.standby import (
    PythonInvocation,
    StandbyPool,
    python_invocation,
    shared_invocation,
    standby_argv,
    standby_job,
)
from agent.processes.usage import publish_usage, read_usage
from agent.processes.workers import WorkerLaunch, WorkerProcess, WorkerSet

__all__ = [
    "WorkerLaunch",
    "WorkerProcess",
    "WorkerSet",
    "ProgramSpawner",
    "spawner_command",
    "StandbyPool",
    "PythonInvocation",
    "python_invocation",
    "shared_invocation",
    "standby_argv",
    "standby_job",
    "LogTee",
    "TeeRoute",
    "publish_usage", "read_usage",
    "die_with_parent",
]
