"""The workers of one attempt: what to start, the started processes, and the set that
starts, watches and stops them."""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.processes import spawner_process
from agent.processes.callable_worker import CallableBoot, run_callable_worker
from agent.processes.spawner_client import ProgramSpawner
from agent.processes.standby import StandbyPool, python_invocation, standby_job

__all__ = ["WorkerLaunch", "WorkerProcess", "WorkerSet"]

logger = logging.getLogger(__name__)


@dataclass
class WorkerLaunch:
    """Everything needed to start one worker.

    ``env`` holds the worker's own variables, applied over the agent's environment.
    ``stdout``/``stderr`` are "" to share the agent's stream, else a file path (os.devnull
    included), as torch's ``LogsDest`` has them.
    """

    local_rank: int
    entrypoint: str | Callable[..., Any]
    args: tuple = ()
    env: dict[str, str] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    error_file: str | None = None


class WorkerProcess:
    """One started worker: its pid, when it started and, once known, how it ended."""

    def __init__(self, launch: WorkerLaunch, pid: int, started_at: float) -> None:
        self.local_rank = launch.local_rank
        self.launch = launch
        self.pid = pid
        self.started_at = started_at
        self.exit_code: int | None = None
        self.exited_at: float | None = None  # epoch seconds, as observed by its reaper
        self.stopped_by_agent = False
        self.cpu_seconds: float | None = None
        self.rss_bytes: int | None = None
        self.result_file: str | None = None
        self.failure: Any = None  # torch's ProcessFailure, once the agent has read the error file

    @property
    def running(self) -> bool:
        return self.exit_code is None

    @property
    def failed(self) -> bool:
        """Ended with a non-zero code on its own, not because the agent stopped it."""
        return self.exit_code not in (None, 0) and not self.stopped_by_agent

    def send_signal(self, sig: int) -> None:
        if self.exit_code is None:
            spawner_process.signal_group(self.pid, sig)

    def mark_exited(self, code: int, exited_at: float) -> None:
        """Record how and when it ended (told by whoever reaped it)."""
        self.exit_code = code
        self.exited_at = exited_at

    def __repr__(self) -> str:
        return f"WorkerProcess(local_rank={self.local_rank}, pid={self.pid}, exit_code={self.exit_code})"


class _ExitSources:
    """The file descriptors that become readable when workers exit (the spawner's report pipe,
    each callable worker's sentinel), each with what it stands for (None: the spawner).

    ``select.poll`` directly rather than ``selectors.DefaultSelector``: the run loop waits here
    ten times a second for the whole job, and the selector's key bookkeeping around the same
    system call is paid on every wait. Without it the agent's idle CPU measured 0.98x of what
    it was with it (``bench/agent_cpu_paired.py --baseline`` the commit before, six pairs).
    """

    def __init__(self) -> None:
        self._poll = select.poll()
        self._stands_for: dict[int, Any] = {}

    def __contains__(self, fd: int) -> bool:
        return fd in self._stands_for

    def add(self, fd: int, stands_for: Any) -> None:
        self._poll.register(fd, select.POLLIN)
        self._stands_for[fd] = stands_for

    def remove(self, fd: int) -> None:
        """Stop watching ``fd``; nothing if it is not watched (a closed one is dropped as found)."""
        if fd in self._stands_for:
            del self._stands_for[fd]
            self._poll.unregister(fd)

    def readable(self, timeout: float | None) -> list[Any]:
        """What the readable (or hung-up) descriptors stand for, after waiting at most
        ``timeout`` seconds (None: until one is). poll rounds a fraction of a millisecond up,
        so a wait never ends before its timeout only to spin."""
        if timeout is not None:
            timeout = max(timeout, 0.0) * 1000.0
        found = []
        for fd, events in self._poll.poll(timeout):
            found.append(self._stands_for[fd])
            if events & select.POLLNVAL:  # closed under us: it would be reported on every call
                self.remove(fd)
        return found

    def close(self) -> None:
        for fd in list(self._stands_for):
            self._poll.unregister(fd)
        self._stands_for.clear()


class WorkerSet:
    """Starts, watches and stops the workers of one attempt.

    Not thread-safe: one thread (the agent's run loop) drives it. Other threads may read the
    workers' plain attributes for status.
    """

    def __init__(self, spawner: ProgramSpawner | None = None) -> None:
        self.workers: list[WorkerProcess] = []
        self._spawner = spawner
        self._exit_sources = _ExitSources()
        self._by_pid: dict[int, WorkerProcess] = {}
        # The multiprocessing.Process of each callable worker, by pid: its sentinel and its
        # exit code are how the set learns of the worker's exit.
        self._callable_processes: dict[int, Any] = {}
        self._new_exits: list[WorkerProcess] = []
        self._result_dir: str | None = None
        self._all_returned: Any = None
        self._closed = False

    # -- starting --------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        launches: list[WorkerLaunch],
        spawner: ProgramSpawner | None = None,
        mp_context: Any = None,
        standbys: StandbyPool | None = None,
    ) -> WorkerSet:
        """Start every launch; on any failure stop the ones already started and raise.

        Program workers that are Python scripts take over a waiting standby from
        ``standbys`` when one fits, and start cold otherwise.
        """
        ws = cls(spawner)
        try:
            programs = [x for x in launches if isinstance(x.entrypoint, str)]
            callables = [x for x in launches if not isinstance(x.entrypoint, str)]
            if programs:
                ws._start_programs(programs, standbys)
            if callables:
                ws._start_callables(callables, mp_context)
        except BaseException:
            ws.stop(signal.SIGKILL, 5.0)
            ws.close()
            raise
        ws.workers.sort(key=lambda w: w.local_rank)
        return ws

    def _start_programs(self, launches: list[WorkerLaunch], standbys: StandbyPool | None) -> None:
        if self._spawner is None or not self._spawner.alive:
            raise RuntimeError("program workers need a running ProgramSpawner")
        base_env = dict(os.environ)
        cwd = os.getcwd()
        requests = []
        for launch in launches:
            request = {
                "argv": [launch.entrypoint, *[str(a) for a in launch.args]],
                "env": {**base_env, **launch.env},
                "cwd": cwd,
                "stdout": launch.stdout,
                "stderr": launch.stderr,
            }
            invocation = python_invocation(launch.entrypoint, launch.args) if standbys else None
            standby = standbys.take(invocation, request["env"]) if invocation else None
            if standby is not None:
                request["standby"] = standby
                request["job"] = standby_job(invocation, launch, request["env"], cwd)
            requests.append(request)
        results = self._spawner.spawn(requests)
        error: BaseException | None = None
        for launch, result in zip(launches, results, strict=True):
            if result[0] == "ok":
                self._add(WorkerProcess(launch, result[1], result[2]))
            elif error is None:
                error = result[1]
        if self._spawner.fileno() not in self._exit_sources:
            self._exit_sources.add(self._spawner.fileno(), None)
        if error is not None:
            raise error

    def _start_callables(self, launches: list[WorkerLaunch], mp_context: Any) -> None:
        # Imported here: only callables need them, and callable workers import this package
        # as they boot, where they would only lengthen start-up.
        import multiprocessing
        import tempfile

        ctx = mp_context or multiprocessing.get_context("spawn")
        parent = None if ctx.get_start_method() == "forkserver" else os.getpid()
        self._result_dir = tempfile.mkdtemp(prefix="elastiscope_results_")
        # Held for the set's life: a child that boots after the last reference is gone would
        # find the barrier's semaphores unlinked.
        self._all_returned = all_returned = ctx.Barrier(len(launches))
        for launch in launches:
            result_file = os.path.join(self._result_dir, f"{launch.local_rank}.pkl")
            boot = CallableBoot(
                launch.entrypoint, launch.args, launch.env, launch.stdout, launch.stderr,
                result_file, parent, all_returned,
            )
            proc = ctx.Process(
                target=run_callable_worker, args=(boot,), name=f"worker{launch.local_rank}"
            )
            proc.start()
            worker = WorkerProcess(launch, proc.pid, time.time())
            worker.result_file = result_file
            self._callable_processes[proc.pid] = proc
            self._add(worker)
            self._exit_sources.add(proc.sentinel, worker)

    def _add(self, worker: WorkerProcess) -> None:
        self.workers.append(worker)
        self._by_pid[worker.pid] = worker

    # -- watching --------------------------------------------------------------------------
    def pids(self) -> dict[int, int]:
        return {w.local_rank: w.pid for w in self.workers}

    def running_ranks(self) -> set[int]:
        """The local ranks of the workers still running (as far as the set knows)."""
        return {w.local_rank for w in self.workers if w.running}

    def wait(self, timeout: float | None) -> bool:
        """Block until a worker exit not yet collected is known, or ``timeout`` passes."""
        if self._new_exits:
            return True
        if not any(w.running for w in self.workers) or self._closed:
            if timeout:
                time.sleep(timeout)
            return bool(self._new_exits)
        self._learn_exits(timeout)
        return bool(self._new_exits)

    def collect(self) -> list[WorkerProcess]:
        """Workers whose exit became known since the last call (checks without blocking)."""
        if not self._closed:
            self._learn_exits(0)
        exits, self._new_exits = self._new_exits, []
        return exits

    def _learn_exits(self, timeout: float | None) -> None:
        spawner = self._spawner
        if spawner is not None and spawner.has_exits_read():
            # Reports read off the pipe while waiting for another reply (a standby request)
            # no longer make the pipe readable: take them before waiting on it.
            self._take_spawner_exits()
            if self._new_exits:
                return
        for worker in self._exit_sources.readable(timeout):
            if worker is None:
                self._take_spawner_exits()
            else:
                self._reap_callable(worker)

    def _take_spawner_exits(self) -> None:
        spawner = self._spawner
        try:
            exits = spawner.take_exits()
        except ChildProcessError:
            exits = {}
        for pid, (code, when) in exits.items():
            worker = self._by_pid.get(pid)
            if worker is not None and worker.running:
                worker.mark_exited(code, when)
                self._new_exits.append(worker)
        if not spawner.alive:
            # Its workers died with it (parent-death signal); nobody is left to report them.
            self._exit_sources.remove(spawner.fileno())
            for worker in self.workers:
                if worker.running and worker.pid not in self._callable_processes:
                    worker.mark_exited(-signal.SIGKILL, time.time())
                    self._new_exits.append(worker)

    def _reap_callable(self, worker: WorkerProcess) -> None:
        proc = self._callable_processes[worker.pid]
        code = proc.exitcode  # reaps without blocking
        if code is None:
            return
        self._exit_sources.remove(proc.sentinel)
        if worker.running:
            worker.mark_exited(code, time.time())
            self._new_exits.append(worker)

    def return_value(self, worker: WorkerProcess) -> Any:
        """A callable worker's return value (None for programs, or if it left none)."""
        if not worker.result_file:
            return None
        try:
            with open(worker.result_file, "rb") as f:
                return pickle.load(f)
        except FileNotFoundError:
            logger.warning("worker %s exited 0 without a return value", worker.local_rank)
            return None

    # -- stopping --------------------------------------------------------------------------
    def stop(self, death_sig: int = signal.SIGTERM, grace: float = 30.0) -> None:
        """Signal every running worker with ``death_sig``, SIGKILL whoever outlives ``grace``."""
        running = [w for w in self.workers if w.running]
        if not running:
            return
        for worker in running:
            worker.stopped_by_agent = True
            worker.send_signal(death_sig)
        if self._wait_all_exited(grace):
            return
        for worker in self.workers:
            if worker.running:
                logger.warning(
                    "worker %s (pid %s) outlived %s for %ss; sending SIGKILL",
                    worker.local_rank, worker.pid, signal.Signals(death_sig).name, grace,
                )
                worker.send_signal(signal.SIGKILL)
        # A process in uninterruptible sleep survives even SIGKILL; do not wedge the agent.
        if not self._wait_all_exited(max(grace, 1.0)):
            stuck = [w.pid for w in self.workers if w.running]
            logger.error("workers %s did not exit after SIGKILL; abandoning them", stuck)

    def _wait_all_exited(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while any(w.running for w in self.workers):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return False
            self._learn_exits(remaining)
        return True

    def close(self) -> None:
        """Release fds and temporary files. Workers should have been stopped."""
        if self._closed:
            return
        self._closed = True
        self._exit_sources.close()
        for worker in self.workers:
            proc = self._callable_processes.get(worker.pid)
            if proc is not None and not worker.running:
                try:
                    proc.close()
                except ValueError:
                    pass
        if self._result_dir:
            import shutil  # loaded already with tempfile, when there are callables

            shutil.rmtree(self._result_dir, ignore_errors=True)


