"""The last lines a worker wrote to stderr, kept so that a failure without an error file still
says why (the line a script prints before ``sys.exit(3)``, a C++ abort, a CUDA message).

Two ways, neither on the worker's write path when it can be avoided:

* stderr redirected to a file (``--log-dir`` with ``-r``/``-t``): nothing runs while the worker
  does; :func:`file_tail` reads the end of the file once, when the failure is handled.
* stderr shared with the agent's console: :class:`StderrRelay` gives each worker a named pipe
  (FIFO) as its stderr and one thread copies every pipe to the agent's fd 2 with raw
  ``os.read``/``os.write`` (they release the GIL), keeping only the last :data:`TAIL_BYTES`.
  The pipes are enlarged to 1 MiB where the kernel allows it, so a burst of output waits in
  the pipe rather than in the worker even while the thread is descheduled. The worker blocks
  only when the console itself blocks, exactly as it would writing to it directly.

Nothing here imports torch (callable workers import this package when they boot).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import shutil
import tempfile
import threading

__all__ = ["TAIL_BYTES", "TAIL_LINES", "TailBuffer", "StderrRelay", "file_tail", "last_line"]

logger = logging.getLogger(__name__)

TAIL_BYTES = 4096  # the tail kept per worker, and at most this many lines of it
TAIL_LINES = 20
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_READ_CHUNK = 65536


def bounded(text: str, max_lines: int = TAIL_LINES) -> str:
    """The last ``max_lines`` lines of ``text`` (a partial first line dropped when cut)."""
    lines = text.splitlines()
    return "\n".join(lines[-max_lines:])


def last_line(text: str) -> str | None:
    """The last non-empty line of ``text``, stripped; None when there is none."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return None


def file_tail(path: str, max_bytes: int = TAIL_BYTES, max_lines: int = TAIL_LINES) -> str:
    """The end of the file at ``path`` (at most ``max_bytes``, ``max_lines``); "" if unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read(max_bytes)
    except OSError:
        return ""
    if size > max_bytes:  # the first line is probably cut: drop it
        data = data.partition(b"\n")[2]
    return bounded(data.decode("utf-8", errors="replace"), max_lines)


class TailBuffer:
    """The last ``max_bytes`` of a byte stream."""

    def __init__(self, max_bytes: int = TAIL_BYTES) -> None:
        self._max = max_bytes
        self._data = bytearray()
        self._cut = False

    def feed(self, chunk: bytes) -> None:
        self._data += chunk
        excess = len(self._data) - self._max
        if excess > 0:
            del self._data[:excess]
            self._cut = True

    def text(self, max_lines: int = TAIL_LINES) -> str:
        data = bytes(self._data)
        if self._cut:
            data = data.partition(b"\n")[2]
        return bounded(data.decode("utf-8", errors="replace"), max_lines)


class StderrRelay:
    """Named pipes as the stderr of workers that share the agent's console, copied to
    ``console_fd`` by one thread that keeps each worker's tail.

    ``path(local_rank)`` is what a worker's launch names as its stderr; ``tail(local_rank)``
    first takes whatever is still in that pipe, so a worker's last words are in it even when
    the failure is handled before the thread woke up. ``close()`` copies what is left, stops
    the thread and removes the pipes.
    """

    def __init__(self, local_ranks: list[int], console_fd: int = 2) -> None:
        self._console_fd = console_fd
        self._dir = tempfile.mkdtemp(prefix="elastiscope_stderr_")
        self._lock = threading.Lock()
        self._paths: dict[int, str] = {}
        self._read_fds: dict[int, int] = {}
        self._hold_fds: list[int] = []  # our own write ends: the pipe never reads as closed
        self._tails: dict[int, TailBuffer] = {}
        self._wake_r, self._wake_w = os.pipe()
        for rank in local_ranks:
            path = os.path.join(self._dir, f"stderr.{rank}")
            os.mkfifo(path, 0o600)
            read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self._hold_fds.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            try:
                fcntl.fcntl(read_fd, _F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:  # over /proc/sys/fs/pipe-max-size: the default 64 KiB then
                pass
            self._paths[rank], self._read_fds[rank] = path, read_fd
            self._tails[rank] = TailBuffer()
        self._thread = threading.Thread(target=self._run, name="elastiscope-stderr", daemon=True)
        self._closed = False

    def start(self) -> StderrRelay:
        self._thread.start()
        return self

    def path(self, local_rank: int) -> str:
        return self._paths[local_rank]

    def tail(self, local_rank: int) -> str:
        with self._lock:
            if local_rank in self._read_fds:
                self._drain(local_rank)
            return self._tails[local_rank].text()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(5.0)
        with self._lock:
            for rank in list(self._read_fds):
                self._drain(rank)
                os.close(self._read_fds.pop(rank))
            for fd in (*self._hold_fds, self._wake_r, self._wake_w):
                os.close(fd)
            self._hold_fds = []
        shutil.rmtree(self._dir, ignore_errors=True)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        by_fd = {fd: rank for rank, fd in self._read_fds.items()}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        try:
            while True:
                ready = [fd for fd, _ in poller.poll()]
                if self._wake_r in ready:
                    return
                with self._lock:
                    for fd in ready:
                        if by_fd.get(fd) in self._read_fds:
                            self._drain(by_fd[fd])
        except Exception:  # a broken console must not take the agent down
            logger.exception("stderr relay stopped")

    def _drain(self, rank: int) -> None:
        """Copy everything the pipe holds now to the console; keep its tail (lock held)."""
        fd = self._read_fds[rank]
        while True:
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return
            if not chunk:
                return
            self._tails[rank].feed(chunk)
            self._write_console(chunk)

    def _write_console(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            try:
                view = view[os.write(self._console_fd, view):]
            except InterruptedError:
                continue
            except OSError as e:  # console gone (closed terminal, EPIPE): keep the tail only
                if e.errno != errno.EAGAIN:
                    return
                select.select([], [self._console_fd], [], 1.0)
