"""The progress record: one small shared-memory file per worker, written by the worker, read by
its agent. Defined once here and used by both sides; imports nothing of ours.

The file is one page. The agent creates it zeroed and passes its path to the worker
(``ELASTISCOPE_PROGRESS_FILE``); the worker maps it at its first report and from then on updates
it with plain stores into the mapping: no thread, no system call per step. The agent maps it too
and reads it at its own pace.

Every field is one 8-byte slot, so the record is three views of the same memory (unsigned,
signed, float). A seqlock keeps reads whole: the writer makes ``SEQ`` odd, writes, makes it even
again; a reader retries while ``SEQ`` is odd or has changed under it. (x86 keeps stores in order,
which is what the writer relies on; a weakly ordered CPU could let a reader see a torn record
with the right sequence, a risk the agent accepts for a progress display.)
"""

from __future__ import annotations

import mmap
import os
import time
from bisect import bisect_left
from time import perf_counter as _perf_counter

# Environment of a worker: where its record is, and the opt-out of counting optimizer steps.
CHANNEL_ENV = "ELASTISCOPE_PROGRESS_FILE"
AUTO_STEPS_ENV = "ELASTISCOPE_AUTO_STEPS"  # "0": the optimizer hook is not installed

SIZE = 4096
MAGIC = 0x454C5350_00000001  # "ELSP" and the layout's version (1)

# Slots (8 bytes each).
S_MAGIC, S_SEQ, S_PID, S_STEPS = 0, 1, 2, 3
S_LAST_END, S_LAST_DURATION, S_FIRST_END = 4, 5, 6  # float: epoch seconds, seconds
S_GLOBAL_STEP, S_FLAGS = 7, 8  # signed (-1: unknown); flags below
S_SAVED_STEP, S_SAVED_TIME, S_LOADED_STEP, S_LOADED_TIME = 9, 10, 11, 12  # signed, float
S_DURATION_SUM = 13  # float: the sum of every step duration counted in the buckets

# Step durations are counted in these buckets (seconds, upper bounds; one more for +Inf), so the
# agent exports the exact distribution however rarely it reads.
DURATION_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 300.0)
S_BUCKETS = 16
S_SCALARS = S_BUCKETS + len(DURATION_BOUNDS) + 1
MAX_SCALARS = 4  # a few named scalars per worker: bounded label values
SCALAR_NAME_BYTES = 32  # four slots of ASCII name, then one slot of value
SCALAR_STRIDE = SCALAR_NAME_BYTES // 8 + 1
MAX_SCALAR_NAME = SCALAR_NAME_BYTES - 1
# Slots up to 64 are the layout's; later versions (stragglers, ...) add fields after them.
S_END = S_SCALARS + SCALAR_STRIDE * MAX_SCALARS

# Stragglers: each step's forward time (elastiscope/forward_timing.py), the time a rank computes
# on its own before the step's collectives. Float seconds; the count is of steps that had any.
S_FORWARD_LAST, S_FORWARD_SUM, S_FORWARD_STEPS = S_END, S_END + 1, S_END + 2
S_USED = S_END + 3  # the slots a reader copies

F_EXPLICIT_STEPS = 1  # the script reports its steps itself: the optimizer hook stands aside
F_EXPLICIT_GLOBAL = 2  # the script set the global step: counted from there
# Stalls (issue 14): the interpreter is shutting down (set from atexit): the training is over,
# so a slow exit (threads joined, stores closed) is not a stall.
F_EXITING = 4


class ProgressWriter:
    """The worker's side: updates its record in place. Not thread-safe (one training loop)."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self._u = memoryview(self._map).cast("Q")
        self._i = memoryview(self._map).cast("q")
        self._d = memoryview(self._map).cast("d")
        self._seq = 0
        self.steps = 0
        self.flags = 0
        self._global_base = -1  # the global step last set (or counted), and the steps then
        self._steps_at_base = 0
        self._last_perf = 0.0
        # Wall-clock time from the monotonic clock: one clock read per step, not two.
        self._epoch_offset = time.time() - time.perf_counter()
        self._scalar_names: list[str] = []
        # The forward time of the step in progress, added to by the DDP forward timing (a plain
        # attribute: stored into the record only when the step ends).
        self.forward_time = 0.0
        self._begin()
        self._u[S_PID] = os.getpid()
        self._i[S_GLOBAL_STEP] = self._i[S_SAVED_STEP] = self._i[S_LOADED_STEP] = -1
        self._u[S_MAGIC] = MAGIC
        self._end()

    def _begin(self) -> None:
        self._seq += 1
        self._u[S_SEQ] = self._seq

    def _end(self) -> None:
        self._seq += 1
        self._u[S_SEQ] = self._seq

    def step(self, global_step: int | None = None) -> None:
        """One step ended now; ``global_step`` is the step counted elsewhere (None: counted
        from the last one set)."""
        perf = _perf_counter()
        now = perf + self._epoch_offset
        steps = self.steps = self.steps + 1
        seq = self._seq + 1
        u, d = self._u, self._d
        u[S_SEQ] = seq
        u[S_STEPS] = steps
        d[S_LAST_END] = now
        if steps & 1023 == 0:  # follow the wall clock if it is adjusted (NTP)
            self._epoch_offset = time.time() - perf
        if steps == 1:
            d[S_FIRST_END] = now
        else:
            duration = perf - self._last_perf
            d[S_LAST_DURATION] = duration
            d[S_DURATION_SUM] += duration
            u[S_BUCKETS + bisect_left(DURATION_BOUNDS, duration)] += 1
        self._last_perf = perf
        forward = self.forward_time
        if forward:
            self.forward_time = 0.0
            d[S_FORWARD_LAST] = forward
            d[S_FORWARD_SUM] += forward
            u[S_FORWARD_STEPS] += 1
        if global_step is not None and not self.flags & F_EXPLICIT_GLOBAL:
            self._i[S_GLOBAL_STEP] = global_step
        elif self._global_base >= 0:
            self._i[S_GLOBAL_STEP] = self._global_base + steps - self._steps_at_base
        self._seq = seq + 1
        u[S_SEQ] = seq + 1

    def forget_steps(self) -> None:
        """Drop the steps counted so far (the optimizer hook's, when the script starts counting
        its own), so that one step is never counted twice."""
        self.steps = 0
        self._begin()
        self._u[S_STEPS] = 0
        self._u[S_BUCKETS:S_SCALARS] = memoryview(bytes(8 * (S_SCALARS - S_BUCKETS))).cast("Q")
        self._d[S_DURATION_SUM] = 0.0
        self._u[S_FORWARD_STEPS] = 0
        self._d[S_FORWARD_SUM] = self._d[S_FORWARD_LAST] = 0.0
        self._end()

    def set_flag(self, flag: int) -> None:
        self.flags |= flag
        self._begin()
        self._u[S_FLAGS] = self.flags
        self._end()

    def set_global_step(self, step: int) -> None:
        self._global_base, self._steps_at_base = int(step), self.steps
        self._begin()
        self._i[S_GLOBAL_STEP] = self._global_base
        self._end()

    def checkpoint(self, loaded: bool, step: int) -> None:
        slot_step, slot_time = (S_LOADED_STEP, S_LOADED_TIME) if loaded else (S_SAVED_STEP, S_SAVED_TIME)
        self._begin()
        self._i[slot_step] = int(step)
        self._d[slot_time] = time.time()
        self._end()

    def scalar(self, name: str, value: float) -> bool:
        """Set a named scalar; False when ``name`` is not valid or the slots are taken."""
        try:
            index = self._scalar_names.index(name)
        except ValueError:
            if len(self._scalar_names) >= MAX_SCALARS or not valid_scalar_name(name):
                return False
            index = len(self._scalar_names)
            self._scalar_names.append(name)
            base = (S_SCALARS + SCALAR_STRIDE * index) * 8
            self._begin()
            self._map[base:base + SCALAR_NAME_BYTES] = name.encode().ljust(SCALAR_NAME_BYTES, b"\0")
            self._end()
        self._begin()
        self._d[S_SCALARS + SCALAR_STRIDE * index + SCALAR_STRIDE - 1] = float(value)
        self._end()
        return True


def valid_scalar_name(name: object) -> bool:
    """Lower-case letters, digits and _ (a Prometheus label value anyone can type), 1..31 long."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_SCALAR_NAME and name.isascii()
            and all(c.islower() or c.isdigit() or c == "_" for c in name))


class ProgressSnapshot:
    """One whole read of a record (the agent's side)."""

    __slots__ = ("pid", "steps", "last_end", "last_duration", "first_end", "global_step",
                 "flags", "saved_step", "saved_time", "loaded_step", "loaded_time",
                 "duration_sum", "buckets", "scalars", "forward_last", "forward_sum",
                 "forward_steps")

    def __init__(self, u, i, d, raw: bytes) -> None:
        self.pid, self.steps, self.flags = u[S_PID], u[S_STEPS], u[S_FLAGS]
        self.last_end, self.last_duration, self.first_end = d[S_LAST_END], d[S_LAST_DURATION], d[S_FIRST_END]
        self.global_step = i[S_GLOBAL_STEP]
        self.saved_step, self.saved_time = i[S_SAVED_STEP], d[S_SAVED_TIME]
        self.loaded_step, self.loaded_time = i[S_LOADED_STEP], d[S_LOADED_TIME]
        self.duration_sum = d[S_DURATION_SUM]
        self.buckets = tuple(u[S_BUCKETS:S_SCALARS])  # per bucket, not cumulative
        scalars = {}
        for k in range(MAX_SCALARS):
            base = S_SCALARS + SCALAR_STRIDE * k
            name = raw[base * 8:base * 8 + SCALAR_NAME_BYTES].rstrip(b"\0")
            if name:
                scalars[name.decode("ascii", "replace")] = d[base + SCALAR_STRIDE - 1]
        self.scalars = scalars
        self.forward_last, self.forward_sum = d[S_FORWARD_LAST], d[S_FORWARD_SUM]
        self.forward_steps = u[S_FORWARD_STEPS]


class ProgressReader:
    """The agent's side of one record: ``read()`` returns a whole snapshot, or None while the
    worker has reported nothing (or the record cannot be read whole)."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            self._map = mmap.mmap(fd, SIZE, prot=mmap.PROT_READ)
        finally:
            os.close(fd)

    def read(self, attempts: int = 100) -> ProgressSnapshot | None:
        for _ in range(attempts):
            raw = self._map[:S_USED * 8]  # one copy, then checked against the sequence
            u = memoryview(raw).cast("Q")
            if u[S_MAGIC] != MAGIC:
                return None
            seq = u[S_SEQ]
            if seq % 2 or self._map[S_SEQ * 8:S_SEQ * 8 + 8] != raw[S_SEQ * 8:S_SEQ * 8 + 8]:
                continue
            return ProgressSnapshot(u, memoryview(raw).cast("q"), memoryview(raw).cast("d"), raw)
        return None

    def close(self) -> None:
        self._map.close()


def create_record(path: str) -> None:
    """A zeroed record at ``path`` (the agent makes it before the worker starts)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, SIZE)
    finally:
        os.close(fd)
