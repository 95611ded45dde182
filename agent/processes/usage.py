"""A process's resource usage (CPU time, resident and proportional memory, mapped files), read
from ``/proc``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from telemetry.events import put_metric

__all__ = ["read_usage", "read_memory", "read_scheduling", "maps_file"]

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


def read_memory(pid: int) -> tuple[int, int] | None:
    """(resident bytes, proportional bytes) of ``pid``: RSS counts every page it maps, PSS
    splits each shared page among the processes that map it. None if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            text = f.read()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(b":")
        if key in (b"Rss", b"Pss"):
            values[key] = int(rest.split()[0]) * 1024
    if b"Rss" not in values:
        return None
    return values[b"Rss"], values.get(b"Pss", values[b"Rss"])


def read_scheduling(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of ``pid``'s main thread, from
    the scheduler's own accounting (/proc/<pid>/schedstat); None if it is gone or the kernel
    keeps no such accounting."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            fields = f.read().split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def maps_file(pid: int, fragment: str) -> bool:
    """Whether ``pid`` has a file whose path contains ``fragment`` mapped (a loaded library)."""
    needle = fragment.encode()
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            return any(needle in line for line in f)
    except OSError:
        return False


def publish_usage(role: str, workers: Iterable[Any]) -> None:
    """Read each running worker's CPU seconds and resident memory, keep them on the worker
    (``cpu_seconds``, ``rss_bytes``: /status shows them) and publish them as metric points."""
    for proc in workers:
        if not proc.running:
            continue
        usage = read_usage(proc.pid)
        if usage is None:
            continue
        proc.cpu_seconds, proc.rss_bytes = usage
        put_metric(f"workers.{role}.worker.{proc.local_rank}.cpu_seconds", proc.cpu_seconds)
        put_metric(f"workers.{role}.worker.{proc.local_rank}.rss_bytes", proc.rss_bytes)
