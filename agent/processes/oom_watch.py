"""Whether the kernel's OOM killer ended a worker, where the machine tells.

Two witnesses, each optional: the kernel log (``/dev/kmsg``, readable by root or with
``CAP_SYSLOG``), which names the killed pid; and the OOM-kill counter of the agent's memory
cgroup (cgroup v2 ``memory.events``, v1 ``memory.oom_control``), compared with its value when
the attempt started. Nothing is read until a worker has died by SIGKILL.
"""

from __future__ import annotations

import os
import re

__all__ = ["oom_kill_count", "killed_by_oom", "kernel_log_names_oom_kill"]

_CGROUP_ROOT = "/sys/fs/cgroup"
_KMSG = "/dev/kmsg"
_MAX_KMSG_RECORDS = 100_000


def _memory_cgroup_files(pid: int | str = "self") -> list[str]:
    """The files holding the OOM-kill counter of ``pid``'s memory cgroup (v2 first, then v1)."""
    files = []
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return files
    for line in lines:
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if controllers == "":
            files.append(os.path.join(_CGROUP_ROOT, path, "memory.events"))
            files.append(os.path.join(_CGROUP_ROOT, "unified", path, "memory.events"))
        elif "memory" in controllers.split(","):
            files.append(os.path.join(_CGROUP_ROOT, "memory", path, "memory.oom_control"))
    return files


def oom_kill_count(pid: int | str = "self") -> int | None:
    """The ``oom_kill`` counter of ``pid``'s memory cgroup; None where it cannot be read."""
    for path in _memory_cgroup_files(pid):
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def kernel_log_names_oom_kill(pid: int) -> bool:
    """True when the kernel log says the OOM killer killed ``pid`` (False if unreadable)."""
    pattern = re.compile(rf"(Killed process {pid}\b|oom-kill:.*\bpid={pid},)")
    try:
        fd = os.open(_KMSG, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        for _ in range(_MAX_KMSG_RECORDS):
            try:
                record = os.read(fd, 8192)
            except BrokenPipeError:  # the ring overwrote what we were about to read
                continue
            except OSError:  # EAGAIN: read it all
                return False
            if not record:
                return False
            if pattern.search(record.decode("utf-8", errors="replace")):
                return True
    finally:
        os.close(fd)
    return False


def killed_by_oom(pid: int, count_before: int | None) -> bool:
    """Whether a worker that died by SIGKILL was the OOM killer's: the kernel log names it, or
    the agent's cgroup counted an OOM kill since ``count_before``."""
    if kernel_log_names_oom_kill(pid):
        return True
    after = oom_kill_count()
    return count_before is not None and after is not None and after > count_before
