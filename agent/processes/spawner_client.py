"""The agent's handle on the worker spawner process (:mod:`agent.processes.spawner_process`).

Why the spawner exists is told in :mod:`agent.processes`. This side starts it, sends it
requests and reads its replies and exit reports, and turns its error descriptions back into
exceptions.
"""

from __future__ import annotations

import os
import select
import sys

from agent.processes import spawner_process

__all__ = ["ProgramSpawner", "spawner_command"]


class ProgramSpawner:
    """The agent's handle on the spawner process.

    The process runs :mod:`agent.processes.spawner_process`, which speaks marshal frames on
    two pipes. Start it from the thread that will outlive the workers (the run loop's): the
    kernel's parent-death signal follows the thread that started a process, not the whole
    process.
    """

    def __init__(self) -> None:
        # Here, not at the top: callable workers import this package at boot and never start
        # a spawner; subprocess would only lengthen their start-up.
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
                spawner_process.send(self._request_fd, ("dismiss", list(pids)))
            except OSError:
                pass

    def _call(self, kind: str, payload: list, reply_kind: str) -> list:
        try:
            spawner_process.send(self._request_fd, (kind, payload))
        except OSError:
            self.alive = False
            raise ChildProcessError("the worker spawner process is gone") from None
        while True:
            message = self._recv()
            if message[0] == reply_kind:
                return [_rebuild_result(r) for r in message[1]]

    def has_exits_read(self) -> bool:
        """Whether exit reports were read off the pipe (while waiting for a reply) and not yet
        taken: they no longer make the pipe readable, so a waiter must take them first."""
        return bool(self._exits)

    def take_exits(self) -> dict[int, tuple[int, float]]:
        """Exits reported so far and not yet taken: {pid: (returncode, epoch seconds)}."""
        while self.alive and self._poller.poll(0):
            self._recv()
        exits, self._exits = self._exits, {}
        return exits

    def _recv(self) -> tuple:
        try:
            message = spawner_process.recv(self._reply_fd)
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
                spawner_process.send(self._request_fd, ("quit",))
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
    "n = {'__name__': 'agent.processes.spawner_process', '__file__': p, '__builtins__': __builtins__}; "
    "exec(f.SourceFileLoader(n['__name__'], p).get_code(n['__name__']), n); "
    "n['main'](*map(int, sys.argv[2:5]))"
)


def spawner_command() -> list[str]:
    """The spawner's command line, before its three arguments (agent pid, request and reply fds).

    ``-I -S``: no site packages, no environment, nothing but the interpreter's own start-up;
    the module imports nothing of ours, so it needs no ``sys.path``.
    """
    return [sys.executable, "-I", "-S", "-c", _SPAWNER_BOOT, spawner_process.__file__]


def _rebuild_result(result: tuple) -> tuple:
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
