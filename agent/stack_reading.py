"""A worker's Python stack as data, and where it is: in a collective, loading data, in user code.

Two texts are read: ``py-spy dump``'s (``Thread 12 (idle): "MainThread"`` then one
``function (file:line)`` per frame) and faulthandler's (``Thread 0x... (most recent call
first):`` then ``File "file", line N in function``). Both list the innermost frame first. The
training loop is the main thread: py-spy names it; faulthandler lists the newest thread first,
so the main thread is its last block.

``locate`` says where one worker is; ``suspects`` which ranks the others are waiting for: when
some ranks wait in a collective, the ranks that are not in one.
"""

from __future__ import annotations

import os
import re
import sysconfig
from dataclasses import dataclass, field

__all__ = ["Frame", "Thread", "Location", "parse_py_spy", "parse_faulthandler", "main_thread",
           "locate", "suspects", "COLLECTIVE", "DATA_LOADING", "USER_CODE", "NOT_RESPONDING",
           "UNKNOWN", "EXITED"]

# Where a rank is (the ``where`` of each rank in the stalled event).
COLLECTIVE = "collective"
DATA_LOADING = "data_loading"
USER_CODE = "user_code"
NOT_RESPONDING = "not_responding"
EXITED = "exited"
UNKNOWN = "unknown"  # a stack was read but holds no frame (a thread outside Python)

_PY_SPY_THREAD = re.compile(r'^Thread (\S+) \(([^)]*)\)(?:: "(.*)")?\s*$')
_PY_SPY_FRAME = re.compile(r"^\s+(?P<function>.+?) \((?P<file>.+?)(?::(?P<line>\d+))?\)\s*$")
_FH_THREAD = re.compile(r"^(Current thread|Thread) (0x[0-9a-fA-F]+) \(most recent call first\):\s*$")
_FH_STACK = re.compile(r"^Stack \(most recent call first\):\s*$")
_FH_FRAME = re.compile(r'^\s+File "(?P<file>.*)", line (?P<line>\d+|\?\?\?) in (?P<function>.*)$')

# torch.distributed's collectives (not torch.distributed.elastic: that is launcher code).
_COLLECTIVE_PATHS = ("torch/distributed/", "torch/nn/parallel/distributed.py")
_NOT_COLLECTIVE_PATHS = ("torch/distributed/elastic/",)
_DATA_PATHS = ("torch/utils/data/",)
_WRAPPERS = {"wrapper", "_wrapper", "inner", "wrapped"}  # decorators around the real call


@dataclass(frozen=True)
class Frame:
    function: str
    file: str
    line: int | None

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass
class Thread:
    name: str
    frames: list[Frame] = field(default_factory=list)  # innermost first
    main: bool = False


@dataclass(frozen=True)
class Location:
    """Where one worker is: ``where`` (one of the kinds above), ``detail`` (the collective's
    name, or the function), and the innermost frame of the script's own code (file:line)."""

    where: str
    detail: str = ""
    code: Frame | None = None

    def describe(self) -> str:
        at = f" at {self.code.where()} ({self.code.function})" if self.code else ""
        if self.where == COLLECTIVE:
            return f"waiting in {self.detail}{at.replace(' at ', ' called from ', 1)}"
        if self.where == DATA_LOADING:
            return f"loading data ({self.detail}){at.replace(' at ', ' called from ', 1)}"
        if self.where == USER_CODE:
            return f"in user code{at}"
        if self.where == NOT_RESPONDING:
            return f"not responding{': ' + self.detail if self.detail else ''}"
        return self.where + (f" ({self.detail})" if self.detail else "")


def parse_py_spy(text: str) -> list[Thread]:
    threads: list[Thread] = []
    for line in text.splitlines():
        head = _PY_SPY_THREAD.match(line)
        if head:
            name = head.group(3) or head.group(1)
            threads.append(Thread(name, main=name == "MainThread"))
            continue
        frame = _PY_SPY_FRAME.match(line)
        if frame and threads:
            number = frame.group("line")
            threads[-1].frames.append(Frame(frame.group("function").strip(), frame.group("file"),
                                            int(number) if number else None))
    return threads


def parse_faulthandler(text: str) -> list[Thread]:
    threads: list[Thread] = []
    for line in text.splitlines():
        head = _FH_THREAD.match(line)
        if head or _FH_STACK.match(line):
            threads.append(Thread(head.group(2) if head else "main"))
            continue
        frame = _FH_FRAME.match(line)
        if frame and threads:
            number = frame.group("line")
            threads[-1].frames.append(Frame(frame.group("function").strip(), frame.group("file"),
                                            int(number) if number.isdigit() else None))
    if threads:
        threads[-1].main = True  # the oldest thread: the one the interpreter started with
    return threads


def main_thread(threads: list[Thread]) -> Thread | None:
    for thread in threads:
        if thread.main:
            return thread
    return threads[0] if threads else None


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(sorted(os.path.realpath(r) + os.sep for r in roots if r))


def is_library(path: str, roots: tuple[str, ...] | None = None) -> bool:
    """Python's own modules and installed packages, as opposed to the script's code."""
    if path.startswith("<") or "/site-packages/" in path or "/dist-packages/" in path:
        return True
    real = os.path.realpath(path)
    return any(real.startswith(root) for root in roots or _library_roots())


def _in(path: str, parts: tuple[str, ...]) -> bool:
    return any(part in path for part in parts)


def locate(threads: list[Thread]) -> Location:
    """Where the main thread is (innermost frames first decide)."""
    thread = main_thread(threads)
    if thread is None or not thread.frames:
        return Location(UNKNOWN)
    roots = _library_roots()
    frames = thread.frames
    code = next((f for f in frames if not is_library(f.file, roots)), None)
    for frame in frames:
        path = frame.file.replace(os.sep, "/")
        if _in(path, _COLLECTIVE_PATHS) and not _in(path, _NOT_COLLECTIVE_PATHS):
            named = next((f for f in frames if _in(f.file.replace(os.sep, "/"), _COLLECTIVE_PATHS)
                          and f.function not in _WRAPPERS), frame)
            return Location(COLLECTIVE, named.function, code)
        if _in(path, _DATA_PATHS):
            return Location(DATA_LOADING, frame.function, code)
    return Location(USER_CODE, frames[0].function, code or frames[0])


def suspects(locations: dict[int, Location]) -> list[int]:
    """The ranks the others wait for: when some wait in a collective, every rank that is not
    in one; when none does, every rank (nothing says which of them holds the others)."""
    waiting = [rank for rank, loc in locations.items() if loc.where == COLLECTIVE]
    if not waiting:
        return sorted(rank for rank, loc in locations.items() if loc.where != EXITED)
    return sorted(rank for rank, loc in locations.items()
                  if loc.where != COLLECTIVE and loc.where != EXITED)
