"""Process supervision for the local agent: spawn, exit watching, stop/kill, logs.

The pieces, each with one job:

* :class:`ProgramSpawner` -- the agent's handle on a small helper process
  (:mod:`agent._spawner`) that forks program workers. Workers must die with the agent, which
  takes ``PR_SET_PDEATHSIG`` set in the child between fork and exec. Doing that from the
  agent itself means a full ``fork()`` of a process with torch mapped (about 14 ms per worker
  measured here, all on the restart's critical path); the helper is a bare interpreter that
  imports next to nothing (it lives as long as the job, so its size is paid all along) and
  starts a worker in about 2 ms. It also reaps the workers and reports each exit on a pipe
  the moment it happens.
* Warm standbys -- for workers that are Python scripts, the spawner can start interpreters
  ahead of a restart (same executable, same flags) that wait on a pipe. A restart hands each
  its environment, log files and argv, and it runs the script in a clean ``__main__`` at once:
  interpreter start-up (50+ ms each, all competing for the same cores) leaves the restart's
  critical path. See :func:`python_invocation` for what qualifies.
* :class:`WorkerSet` -- the workers of one attempt. It starts them (programs through the
  spawner, Python callables through ``multiprocessing``), learns of every exit through one
  selector (the spawner's report pipe and the callables' sentinels), so the agent hears about
  an exit within milliseconds whatever its monitor interval, and stops them (signal, grace
  period, SIGKILL).
* :class:`LogTee` -- copies redirected log files to the console with a per-rank prefix.
* :func:`read_usage` -- CPU seconds and resident memory of a process, from ``/proc``.

No orphans: each worker asks the kernel for SIGKILL when its parent dies and then checks that
its parent is still the process that started it (the parent may have died before the request
took effect). The spawner does the same with the agent, so killing the agent takes down the
spawner and, through it, every program worker.

Nothing here imports torch: callable workers import this module when they boot.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import selectors
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from agent import _spawner

__all__ = [
    "WorkerLaunch",
    "WorkerProcess",
    "WorkerSet",
    "ProgramSpawner",
    "StandbyPool",
    "PythonInvocation",
    "python_invocation",
    "LogTee",
    "TeeRoute",
    "read_usage",
    "die_with_parent",
]

logger = logging.getLogger(__name__)


def die_with_parent(expected_parent: int | None) -> None:
    """Have the kernel SIGKILL this process when its parent dies; die now if it already has.

    The request only covers a parent that dies *after* it is made, so the check that follows
    closes the window between fork and this call: a parent that died in it has already
    handed us to another process. ``expected_parent`` None skips the check (the forkserver
    start method, where the parent is not the agent).
    """
    _spawner.die_with_parent(expected_parent)


# ---- what to start ------------------------------------------------------------------------


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


@dataclass
class _CallableBoot:
    """What a callable worker needs at boot; pickled across by multiprocessing."""

    fn: Callable[..., Any]
    args: tuple
    env: dict[str, str]
    stdout: str
    stderr: str
    result_file: str
    parent_pid: int | None
    # Shared by the attempt's callable workers: one that has returned waits here for the
    # others before its process exits (see _callable_worker_main).
    all_returned: Any = None


def _callable_worker_main(boot: _CallableBoot) -> None:
    """Body of a callable worker process: the same steps as torch's, minus its eager imports.

    A worker that returns stays alive until every local worker has returned, as torch's do.
    Its process may own one end of connections its peers still use (a gloo rank's sockets):
    exiting at once would tear them down under a peer still finishing its own last
    collective, and that peer would abort. A worker that fails exits at once; the agent then
    stops the others.
    """
    die_with_parent(boot.parent_pid)
    try:
        os.setsid()  # its own process group, so that a stop reaches the worker's children too
    except OSError:
        pass
    _redirect_fd(1, boot.stdout, sys.stdout)
    _redirect_fd(2, boot.stderr, sys.stderr)
    os.environ.update(boot.env)
    result = _call_recording_errors(boot.fn, boot.args)
    tmp = f"{boot.result_file}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    os.replace(tmp, boot.result_file)
    if boot.all_returned is not None:
        boot.all_returned.wait()


def _redirect_fd(fd: int, path: str, stream: TextIO) -> None:
    if not path:
        return
    stream.flush()
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(target, fd)
    os.close(target)


def _call_recording_errors(fn: Callable[..., Any], args: tuple) -> Any:
    """Run ``fn`` as torch's ``@record`` would: an uncaught exception lands in the error file.

    torch's error handler is imported only when there is an error to write, so a worker that
    does not use torch does not pay for importing it.
    """
    import faulthandler

    faulthandler.enable(all_threads=True)
    try:
        return fn(*args)
    except SystemExit as exc:
        if exc.code == 0:
            return None
        raise
    except Exception as exc:
        errors = sys.modules.get("torch.distributed.elastic.multiprocessing.errors")
        if errors is not None and isinstance(exc, errors.ChildFailedError):
            _, failure = exc.get_first_failure()
            if failure.error_file != "<N/A>":
                errors.get_error_handler().dump_error_file(failure.error_file, failure.exitcode)
        else:
            from torch.distributed.elastic.multiprocessing.errors import get_error_handler

            get_error_handler().record_exception(exc)
        raise


# ---- warm standbys -------------------------------------------------------------------------

# Interpreter options that change nothing about where the program comes from.
_PLAIN_FLAGS = set("bBdEIOPqRsSuv")
_VALUE_FLAGS = ("-W", "-X")


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
    this interpreter's), with options that do not select the program (``-c``, ``-`` and
    ``-i`` do not qualify). Anything else returns None and is always started cold.
    """
    if not isinstance(entrypoint, str) or not sys.executable:
        return None
    try:
        if os.path.realpath(entrypoint) != os.path.realpath(sys.executable):
            return None
    except OSError:
        return None
    words = [str(a) for a in args]
    flags: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in _VALUE_FLAGS and i + 1 < len(words):
            flags += [word, words[i + 1]]
            i += 2
        elif word.startswith(_VALUE_FLAGS) and len(word) > 2:
            flags.append(word)
            i += 1
        elif word == "-m" and i + 1 < len(words):
            return PythonInvocation(entrypoint, tuple(flags), None, words[i + 1], tuple(words[i + 2 :]))
        elif word.startswith("-") and len(word) > 1 and set(word[1:]) <= _PLAIN_FLAGS:
            flags.append(word)
            i += 1
        elif not word.startswith("-"):
            return PythonInvocation(entrypoint, tuple(flags), word, None, tuple(words[i + 1 :]))
        else:
            return None
    return None


# Runs inside a standby interpreter as ``python <flags> -c BOOT <job fd> <script> <args...>``
# (the script and arguments are there only so that ps shows what the standby is for). It waits
# for its job, becomes the worker (cwd, environment, log files, argv, sys.path[0]) and runs the
# program in a __main__ namespace laid out as ``python script.py`` lays it out. EOF without a
# job means "not needed": exit quietly.
_STANDBY_BOOT = """\
def _elastiscope_standby():
    import os, sys, marshal
    fd = int(sys.argv[1])
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    if not chunks:
        os._exit(0)
    job = marshal.loads(b"".join(chunks))
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    for fd_no, path, stream in ((1, job["stdout"], sys.stdout), (2, job["stderr"], sys.stderr)):
        if path:
            stream.flush()
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd_no)
            os.close(target)
    if job["stdout"]:
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
    main = sys.modules["__main__"]
    namespace = main.__dict__
    builtins = namespace["__builtins__"]
    namespace.clear()
    namespace.update(__name__="__main__", __doc__=None, __package__=None, __spec__=None,
                     __annotations__={}, __builtins__=builtins)
    if job["module"]:
        import runpy
        if not sys.flags.safe_path:
            sys.path[0] = os.getcwd()
        sys.argv[:] = ["-m", *job["args"]]
        runpy._run_module_as_main(job["module"], alter_argv=True)
        return
    script = job["script"]
    if not sys.flags.safe_path:
        sys.path[0] = os.path.dirname(os.path.realpath(script))
    sys.argv[:] = [script, *job["args"]]
    loaders = sys.modules["_frozen_importlib_external"]
    namespace.update(__file__=script, __cached__=None,
                     __loader__=loaders.SourceFileLoader("__main__", script))
    with open(script, "rb") as f:
        source = f.read()
    exec(compile(source, script, "exec", dont_inherit=True), namespace)
_elastiscope_standby()
"""


def standby_argv(invocation: PythonInvocation) -> list[str]:
    """The command of a standby for ``invocation``; the spawner inserts the job fd after BOOT."""
    return [invocation.executable, *invocation.flags, "-c", _STANDBY_BOOT]


def standby_job(invocation: PythonInvocation, launch: WorkerLaunch, env: dict, cwd: str) -> dict:
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


# ---- the spawner --------------------------------------------------------------------------


class ProgramSpawner:
    """The agent's handle on the spawner process (see the module docstring for why it exists).

    The process runs :mod:`agent._spawner`, which speaks marshal frames on two pipes. Start
    it from the thread that will outlive the workers (the run loop's): the kernel's
    parent-death signal follows the thread that started a process, not the whole process.
    """

    def __init__(self) -> None:
        import subprocess

        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [*spawner_command(), str(os.getpid()), str(request_r), str(reply_w)],
                pass_fds=(request_r, reply_w),
                start_new_session=True,  # terminal signals are the agent's to handle
            )
        except BaseException:
            for fd in (request_r, request_w, reply_r, reply_w):
                os.close(fd)
            raise
        os.close(request_r)
        os.close(reply_w)
        self._request_fd = request_w
        self._reply_fd = reply_r
        self._poller = select.poll()
        self._poller.register(reply_r, select.POLLIN)
        self._exits: dict[int, tuple[int, float]] = {}
        self.alive = True

    @property
    def pid(self) -> int:
        return self._proc.pid

    def fileno(self) -> int:
        return self._reply_fd

    def spawn(self, requests: list[dict]) -> list[tuple]:
        """Start programs; one ("ok", pid, started_at) or ("error", exception) per request.

        A request naming a ``standby`` (with its ``job``) hands the job to that standby, and
        falls back to a cold start if the standby is gone.
        """
        return self._call("spawn", requests, "spawned")

    def start_standbys(self, requests: list[dict]) -> list[tuple]:
        """Start standby interpreters; one ("ok", pid, started_at) or ("error", exc) each."""
        return self._call("standby", requests, "standbys")

    def dismiss(self, pids: list[int]) -> None:
        """Tell unused standbys to exit."""
        if pids and self.alive:
            try:
                _spawner.send(self._request_fd, ("dismiss", list(pids)))
            except OSError:
                pass

    def _call(self, kind: str, payload: list, reply_kind: str) -> list:
        try:
            _spawner.send(self._request_fd, (kind, payload))
        except OSError:
            self.alive = False
            raise ChildProcessError("the worker spawner process is gone") from None
        while True:
            message = self._recv()
            if message[0] == reply_kind:
                return [_result(r) for r in message[1]]

    def take_exits(self) -> dict[int, tuple[int, float]]:
        """Exits reported so far and not yet taken: {pid: (returncode, epoch seconds)}."""
        while self.alive and self._poller.poll(0):
            self._recv()
        exits, self._exits = self._exits, {}
        return exits

    def _recv(self) -> tuple:
        try:
            message = _spawner.recv(self._reply_fd)
        except (EOFError, OSError, ValueError):  # ValueError: a frame marshal cannot read
            self.alive = False
            raise ChildProcessError("the worker spawner process is gone") from None
        if message[0] == "exited":
            for pid, code, when in message[1]:
                self._exits[pid] = (code, when)
        return message

    def close(self, timeout: float = 5.0) -> None:
        if self._proc.returncode is None:
            try:
                _spawner.send(self._request_fd, ("quit",))
            except OSError:
                pass
            try:
                self._proc.wait(timeout)
            except Exception:
                self._proc.kill()
                self._proc.wait()
        self.alive = False
        for fd in (self._request_fd, self._reply_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._request_fd = self._reply_fd = -1


# Runs the spawner's module from its cached bytecode: run as a script (``python file.py``) it
# would be compiled on every start, which costs the process about 1 MiB of its peak for good.
_SPAWNER_BOOT = (
    "import sys, _frozen_importlib_external as f; p = sys.argv[1]; "
    "n = {'__name__': 'agent._spawner', '__file__': p, '__builtins__': __builtins__}; "
    "exec(f.SourceFileLoader(n['__name__'], p).get_code(n['__name__']), n); "
    "n['main'](*map(int, sys.argv[2:5]))"
)


def spawner_command() -> list[str]:
    """The spawner's command line, before its three arguments (agent pid, request and reply fds).

    ``-I -S``: no site packages, no environment, nothing but the interpreter's own start-up;
    the module imports nothing from this package, so it needs no ``sys.path``.
    """
    return [sys.executable, "-I", "-S", "-c", _SPAWNER_BOOT, _spawner.__file__]


def _result(result: tuple) -> tuple:
    """A spawner result, with its error description made an exception again."""
    if result[0] != "error":
        return result
    kind, *detail = result[1]
    if kind == "OSError":
        errno, strerror, filename = detail
        # OSError(errno, ...) picks the subclass (FileNotFoundError, PermissionError, ...).
        exc = OSError(errno, strerror, filename) if filename is not None else OSError(errno, strerror)
    else:
        exc = RuntimeError(detail[0])
    return ("error", exc)


# ---- the workers of one attempt -----------------------------------------------------------


class WorkerProcess:
    """One started worker: its pid, when it started and, once known, how it ended."""

    def __init__(self, launch: WorkerLaunch, pid: int, started_at: float) -> None:
        self.local_rank = launch.local_rank
        self.launch = launch
        self.pid = pid
        self.started_at = started_at
        self.exit_code: int | None = None
        self.exited_at: float | None = None  # epoch seconds, as observed by its reaper
        self.noticed_at: float | None = None  # epoch seconds, when the agent learned of it
        self.stopped_by_agent = False
        self.cpu_seconds: float | None = None
        self.rss_bytes: int | None = None
        self.result_file: str | None = None
        self.failure: Any = None  # torch's ProcessFailure, once the agent has read the error file
        self._mp_process: Any = None  # multiprocessing.Process for callables

    @property
    def running(self) -> bool:
        return self.exit_code is None

    @property
    def failed(self) -> bool:
        """Ended with a non-zero code on its own, not because the agent stopped it."""
        return self.exit_code not in (None, 0) and not self.stopped_by_agent

    def send_signal(self, sig: int) -> None:
        if self.exit_code is None:
            _spawner._signal_group(self.pid, sig)

    def _ended(self, code: int, exited_at: float) -> None:
        self.exit_code = code
        self.exited_at = exited_at
        self.noticed_at = time.time()

    def __repr__(self) -> str:
        return f"WorkerProcess(local_rank={self.local_rank}, pid={self.pid}, exit_code={self.exit_code})"


class WorkerSet:
    """Starts, watches and stops the workers of one attempt.

    Not thread-safe: one thread (the agent's run loop) drives it. Other threads may read the
    workers' plain attributes for status.
    """

    def __init__(self, spawner: ProgramSpawner | None = None) -> None:
        self.workers: list[WorkerProcess] = []
        self._spawner = spawner
        self._selector = selectors.DefaultSelector()
        self._by_pid: dict[int, WorkerProcess] = {}
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
            standby = standbys.take(invocation) if invocation else None
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
        if self._spawner.fileno() not in self._selector.get_map():
            self._selector.register(self._spawner.fileno(), selectors.EVENT_READ, None)
        if error is not None:
            raise error

    def _start_callables(self, launches: list[WorkerLaunch], mp_context: Any) -> None:
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
            boot = _CallableBoot(
                launch.entrypoint, launch.args, launch.env, launch.stdout, launch.stderr,
                result_file, parent, all_returned,
            )
            proc = ctx.Process(
                target=_callable_worker_main, args=(boot,), name=f"worker{launch.local_rank}"
            )
            proc.start()
            worker = WorkerProcess(launch, proc.pid, time.time())
            worker.result_file = result_file
            worker._mp_process = proc
            self._add(worker)
            self._selector.register(proc.sentinel, selectors.EVENT_READ, worker)

    def _add(self, worker: WorkerProcess) -> None:
        self.workers.append(worker)
        self._by_pid[worker.pid] = worker

    # -- watching --------------------------------------------------------------------------
    def pids(self) -> dict[int, int]:
        return {w.local_rank: w.pid for w in self.workers}

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
        if spawner is not None and spawner._exits:
            # Reports read off the pipe while waiting for another reply (a standby request)
            # no longer make the pipe readable: take them before waiting on it.
            self._take_spawner_exits()
            if self._new_exits:
                return
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._take_spawner_exits()
            else:
                self._reap_callable(key.data)

    def _take_spawner_exits(self) -> None:
        spawner = self._spawner
        try:
            exits = spawner.take_exits()
        except ChildProcessError:
            exits = {}
        for pid, (code, when) in exits.items():
            worker = self._by_pid.get(pid)
            if worker is not None and worker.running:
                worker._ended(code, when)
                self._new_exits.append(worker)
        if not spawner.alive:
            # Its workers died with it (parent-death signal); nobody is left to report them.
            self._selector.unregister(spawner.fileno())
            for worker in self.workers:
                if worker.running and worker._mp_process is None:
                    worker._ended(-signal.SIGKILL, time.time())
                    self._new_exits.append(worker)

    def _reap_callable(self, worker: WorkerProcess) -> None:
        proc = worker._mp_process
        code = proc.exitcode  # reaps without blocking
        if code is None:
            return
        self._selector.unregister(proc.sentinel)
        if worker.running:
            worker._ended(code, time.time())
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
        self._selector.close()
        for worker in self.workers:
            if worker._mp_process is not None and not worker.running:
                try:
                    worker._mp_process.close()
                except ValueError:
                    pass
        if self._result_dir:
            import shutil

            shutil.rmtree(self._result_dir, ignore_errors=True)


# ---- logs --------------------------------------------------------------------------------


@dataclass
class TeeRoute:
    """One log file to follow: each complete line goes to every output whose filter accepts it."""

    path: str
    prefix: str
    outputs: list[tuple[TextIO, Callable[[str], bool] | None]]


class LogTee:
    """Copies what workers write to their log files onto the console, line by line, prefixed.

    Workers write to files, not pipes, so a slow console never blocks a worker and the file
    stays complete even if the agent dies; this thread follows the files like ``tail -f``.
    One thread follows every file. ``stop()`` copies whatever is left, then returns.
    """

    def __init__(self, routes: list[TeeRoute], interval: float = 0.1) -> None:
        self._routes = routes
        self._interval = interval
        self._files: dict[int, Any] = {}
        self._partial: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LogTee:
        if self._routes:
            self._thread = threading.Thread(target=self._run, name="elastiscope-log-tee", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._interval):
                self._pump(final=False)
            self._pump(final=True)
        except Exception:  # a broken console must not take the agent down
            logger.exception("log tee stopped")
        finally:
            for f in self._files.values():
                f.close()

    def _pump(self, final: bool) -> None:
        for i, route in enumerate(self._routes):
            f = self._files.get(i)
            if f is None:
                try:
                    f = self._files[i] = open(route.path, errors="replace")  # noqa: SIM115
                except FileNotFoundError:
                    continue
            chunk = f.read()
            if not chunk and not (final and self._partial.get(i)):
                continue
            text = self._partial.pop(i, "") + chunk
            lines = text.split("\n")
            tail = lines.pop()
            if final and tail:
                lines.append(tail)
            elif tail:
                self._partial[i] = tail
            self._write(route, lines)

    @staticmethod
    def _write(route: TeeRoute, lines: list[str]) -> None:
        for dst, keep in route.outputs:
            out = [f"{route.prefix}{line}\n" for line in lines if keep is None or keep(line)]
            if out:
                dst.write("".join(out))
                dst.flush()


# ---- resources ---------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PF_EXITING = 0x4  # the kernel's per-task flag: in exit, tearing down


def read_usage(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of ``pid`` from /proc; None if it is gone or exiting.

    A worker that has exited but is not reaped yet still has a /proc entry, with no memory:
    reporting its 0 bytes would overwrite the worker's last real sample. The same holds a
    moment earlier, while the kernel tears the exiting process down: its memory is already
    released (0 pages) but it is not a zombie yet.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # zombie or dead: exited, not yet reaped
        return None
    flags, utime, stime, rss_pages = int(fields[6]), int(fields[11]), int(fields[12]), int(fields[21])
    if flags & _PF_EXITING or not rss_pages:  # exiting: its memory is gone or going
        return None
    return (utime + stime) / _CLOCK_TICKS, rss_pages * _PAGE_SIZE
