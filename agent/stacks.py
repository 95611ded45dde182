"""Every worker's Python stack, read without stopping the job, in a bounded time.

py-spy first (``py-spy dump --nonblocking``: it reads the worker's memory and never pauses
it); for the workers it cannot read (not installed, ptrace not permitted, a Python it does not
know), the worker's own faulthandler dump, which the agent arranged at worker start
(:mod:`elastiscope.stack_dump`) and asks for with ``STACK_SIGNAL``. Every worker is read at
once, each method within ``timeout`` seconds, so a capture holds the agent for at most twice
that. A stopped process (SIGSTOP, a debugger) cannot answer a signal: it is not responding
(py-spy's reading of it is kept, if any).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

from agent.stack_reading import (EXITED, NOT_RESPONDING, Location, Thread, locate,
                                 parse_faulthandler, parse_py_spy)
from elastiscope.stack_dump import STACK_SIGNAL

__all__ = ["StackTarget", "WorkerStack", "capture_stacks", "py_spy_binary", "PY_SPY_ENV",
           "CAPTURE_TIMEOUT_S"]

PY_SPY_ENV = "ELASTISCOPE_PY_SPY"  # the py-spy to use, or "off" to use only faulthandler
CAPTURE_TIMEOUT_S = 2.0  # per method, for all workers at once
_POLL_S = 0.01
PY_SPY = "py-spy"
FAULTHANDLER = "faulthandler"


@dataclass(frozen=True)
class StackTarget:
    pid: int
    dump_file: str | None  # where the worker's faulthandler writes (None: no fallback)


@dataclass
class WorkerStack:
    local_rank: int
    pid: int
    method: str | None = None  # PY_SPY, FAULTHANDLER, or None when no stack was read
    text: str = ""
    note: str = ""  # why there is no stack, or why the worker is not responding
    threads: list[Thread] = field(default_factory=list)
    location: Location = Location(NOT_RESPONDING)


def py_spy_binary() -> str | None:
    """The py-spy to run: ``ELASTISCOPE_PY_SPY`` (a path, or off), else the one on PATH or
    installed beside this interpreter (pip puts it there)."""
    chosen = os.environ.get(PY_SPY_ENV, "").strip()
    if chosen.lower() in ("off", "0", "none", "false", "no"):
        return None
    if chosen:
        return chosen
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return shutil.which("py-spy") or (beside if os.access(beside, os.X_OK) else None)


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state (R, S, D, T, t, Z, ...), None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:][:1].decode() or None


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for ``signum`` (SigCgt in /proc/<pid>/status): sending
    it to one that does not would end the process."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def capture_stacks(targets: dict[int, StackTarget], timeout: float = CAPTURE_TIMEOUT_S,
                   py_spy: str | None = "auto") -> dict[int, WorkerStack]:
    """Each target's stack by local rank; never raises, returns within about 2 x ``timeout``."""
    binary = py_spy_binary() if py_spy == "auto" else py_spy
    stacks = {rank: WorkerStack(rank, t.pid) for rank, t in targets.items()}
    states = {rank: process_state(t.pid) for rank, t in targets.items()}
    live = [rank for rank, s in states.items() if s not in (None, "Z", "X")]
    for rank, s in states.items():
        if rank not in live:
            stacks[rank].location, stacks[rank].note = Location(EXITED), "exited"
    if binary and live:
        for rank, (text, note) in _read_with_py_spy(binary, {r: targets[r].pid for r in live}, timeout).items():
            _keep(stacks[rank], PY_SPY, text, parse_py_spy(text), note)
    stopped = [rank for rank in live if states[rank] in ("T", "t")]
    wanted = [rank for rank in live if not stacks[rank].threads and rank not in stopped]
    if wanted:
        dumps = _read_with_faulthandler({r: targets[r] for r in wanted}, timeout)
        for rank, (text, note) in dumps.items():
            _keep(stacks[rank], FAULTHANDLER, text, parse_faulthandler(text), note)
    for rank in live:
        stack = stacks[rank]
        if rank in stopped:
            stack.location = Location(NOT_RESPONDING, f"process stopped (state {states[rank]})")
        elif stack.threads:
            stack.location = locate(stack.threads)
        else:
            stack.location = Location(NOT_RESPONDING, stack.note or "no stack within the capture time")
    return stacks


def _keep(stack: WorkerStack, method: str, text: str, threads: list[Thread], note: str) -> None:
    if threads and not stack.threads:
        stack.method, stack.text, stack.threads = method, text, threads
    elif note and not stack.threads:
        stack.note = "; ".join(n for n in (stack.note, f"{method}: {note}") if n)


def _read_with_py_spy(binary: str, pids: dict[int, int], timeout: float) -> dict[int, tuple[str, str]]:
    deadline = time.monotonic() + timeout
    running: dict[int, subprocess.Popen] = {}
    out: dict[int, tuple[str, str]] = {}
    for rank, pid in pids.items():
        try:
            running[rank] = subprocess.Popen(
                [binary, "dump", "--nonblocking", "--full-filenames", "--pid", str(pid)], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
        except OSError as e:
            out[rank] = ("", f"cannot run {binary}: {e.strerror or e}")
    for rank, proc in running.items():
        try:
            stdout, stderr = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out[rank] = ("", f"no answer within {timeout:g}s")
            continue
        reason = next((line.strip() for line in stderr.splitlines() if line.strip()), "")
        out[rank] = (stdout, "" if proc.returncode == 0 else reason or f"exit {proc.returncode}")
    return out


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_with_faulthandler(targets: dict[int, StackTarget], timeout: float) -> dict[int, tuple[str, str]]:
    """Signal every worker that registered the dump, then read what each appended, once its
    file has stopped growing."""
    out: dict[int, tuple[str, str]] = {}
    asked: dict[int, int] = {}  # rank: the file's size before the signal
    for rank, target in targets.items():
        if not target.dump_file or not _catches(target.pid, STACK_SIGNAL):
            out[rank] = ("", "no stack dump registered in the worker")
            continue
        asked[rank] = _file_size(target.dump_file)
        try:
            os.kill(target.pid, STACK_SIGNAL)
        except OSError as e:
            out[rank] = ("", f"cannot signal: {e.strerror or e}")
            del asked[rank]
    seen = dict(asked)
    deadline = time.monotonic() + timeout
    while asked and time.monotonic() < deadline:
        time.sleep(_POLL_S)  # a file the worker appends to: nothing to wait on but its size
        for rank in list(asked):
            size = _file_size(targets[rank].dump_file)
            if size > asked[rank] and size == seen[rank]:  # grew, then held still for a poll
                out[rank] = (_read_from(targets[rank].dump_file, asked.pop(rank)), "")
            seen[rank] = size
    for rank, start in asked.items():
        text = _read_from(targets[rank].dump_file, start)
        out[rank] = (text, "" if text else f"no dump within {timeout:g}s")
    return out


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            return f.read(1 << 20)
    except OSError:
        return ""
