"""Measuring helpers shared by run_all.py, scaling.py and detection_latency.py.

Everything here measures from the outside, the same way for both launchers: the workers stamp
``time.time()`` into files, the launcher process tree is read with psutil, and each launcher is
asked for nothing it would not print for a user. The one exception is the crash-once shim,
which wraps each agent's ``_monitor_workers`` to stamp when the run loop began the check that
reported the failure (torchrun has no live failure event to read instead).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

OURS, THEIRS = "elastiscope", "torchrun"
LAUNCHER_NAMES = (OURS, THEIRS)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2, without the usage dump."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


# ---- the machine ---------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head or "unknown"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict:
    """What an absolute time means nothing without."""
    memory = psutil.virtual_memory()
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cpus": psutil.cpu_count(logical=False),
        "memory_gib": round(memory.total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": _package_version("torch"),
        "psutil": _package_version("psutil"),
        "commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_start": load_average(),
    }


# ---- repetitions ----------------------------------------------------------------------------


def summarize(samples: Sequence[float]) -> dict:
    """Median, min, max of the samples, and the samples themselves (for the raw results)."""
    values = [float(v) for v in samples]
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "samples": []}
    return {"n": len(values), "median": statistics.median(values), "min": min(values),
            "max": max(values), "samples": values}


def ratio(ours: dict | None, theirs: dict | None) -> float | None:
    """ours / theirs on medians; None when either side is missing or theirs is zero."""
    if not ours or not theirs or ours.get("median") is None or not theirs.get("median"):
        return None
    return ours["median"] / theirs["median"]


def alternating(reps: int, names: Sequence[str]) -> Iterator[tuple[int, str]]:
    """(rep, name) with the order flipped every repetition, so neither side always goes first."""
    for rep in range(reps):
        order = list(names) if rep % 2 == 0 else list(reversed(names))
        for name in order:
            yield rep, name


class RunFailed(RuntimeError):
    """One run of a launcher went wrong (non-zero exit, missing stamps): counted, not fatal."""


def failure_line(stderr: str) -> str:
    """The most telling line of a failed run's stderr, for a one-line report."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for marker in ("Fatal Python error", "Error", "error"):
        for line in reversed(lines):
            if marker in line:
                return line[:200]
    return lines[-1][:200] if lines else "no output"


def ab_runs(reps: int, measure_one: Callable[[int, str], dict], progress: Callable[[str], None] | None = None,
            label: str = "", names: Sequence[str] = LAUNCHER_NAMES) -> tuple[dict[str, list[dict]], dict[str, list[str]]]:
    """``measure_one(rep, name)`` for every repetition, alternating; failed runs are set aside.

    A failed run is retried once, so one bad run does not leave a repetition empty; every
    failure is kept and reported.

    Returns ({name: [row, ...]}, {name: [failure, ...]}). Raises RunFailed if every run of a
    launcher failed, since there is then nothing to compare.
    """
    rows: dict[str, list[dict]] = {n: [] for n in names}
    failures: dict[str, list[str]] = {n: [] for n in names}
    for rep, name in alternating(reps, names):
        for _attempt in range(2):  # a failed run is recorded, then tried once more
            try:
                row = measure_one(rep, name)
            except RunFailed as e:
                failures[name].append(str(e))
                if progress:
                    progress(f"{label} rep {rep} {name}: FAILED: {e}")
                continue
            break
        else:
            continue
        rows[name].append(row)
        if progress:
            progress(f"{label} rep {rep} {name}: " + ", ".join(_brief(k, v) for k, v in row.items()))
    for name in names:
        if not rows[name]:
            raise RunFailed(f"every run of {name} failed; first: {failures[name][0]}")
    return rows, failures


def _brief(key: str, value) -> str:
    if isinstance(value, float):
        seconds = key.endswith("_s") and not key.endswith("per_s")
        return f"{key}={value * 1000:.1f}ms" if seconds else f"{key}={value:.3g}"
    return f"{key}={value}"


def summaries(rows: list[dict]) -> dict[str, dict]:
    """{metric: summarize(values)} over the metrics the rows have (None values left out)."""
    keys = {k for row in rows for k in row}
    out = {}
    for key in sorted(keys):
        values = [row[key] for row in rows if isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)]
        if values:
            out[key] = summarize(values)
    return out


# ---- launchers -----------------------------------------------------------------------------


class CheckoutFailed(RuntimeError):
    """A commit asked for could not be checked out (a typo, a commit this clone lacks)."""


@contextlib.contextmanager
def checked_out(commits: dict[str, str], parent: Path) -> Iterator[dict[str, Path]]:
    """Each commit checked out into a detached git worktree of this repository under ``parent``:
    ``{name: folder}``. Every worktree added is removed on the way out, also when a later one
    cannot be checked out (``CheckoutFailed``, with git's reason in one line)."""
    folders: dict[str, Path] = {}
    try:
        for name, commit in commits.items():
            folder = parent / f"{name}-tree"
            added = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(folder), commit],
                                   capture_output=True, text=True)
            if added.returncode != 0:
                raise CheckoutFailed(f"cannot check out {commit!r}: {failure_line(added.stderr)}")
            folders[name] = folder
        yield folders
    finally:
        for folder in folders.values():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_env(**extra: str) -> dict[str, str]:
    """The environment both launchers get: the repo importable, one thread per worker."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    # Both launchers would set it (with a warning each); setting it keeps their stderr quiet.
    env.setdefault("OMP_NUM_THREADS", "1")
    # Other engineers' settings must not leak into the runs.
    for key in list(env):
        if key.startswith(("PET_", "ELASTISCOPE_", "TORCHELASTIC_")):
            del env[key]
    env.update(extra)
    return env


def rdzv_flags(rdzv: str) -> list[str]:
    """Rendezvous flags meaning the same thing to both launchers.

    ``c10d``: ``--standalone`` (an embedded c10d store on a free port), torchrun's
    recommendation for one node. ``static``: torch's static handler on a free port.
    """
    if rdzv == "c10d":
        return ["--standalone"]
    if rdzv == "static":
        return ["--rdzv-backend", "static", "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    raise ValueError(f"unknown rendezvous {rdzv!r}")


def ours_flags(workdir: Path) -> list[str]:
    """Our observability defaults, except two things that would only make a bench slower.

    The endpoint stays on (port 0) and the event log is written, as for a user; the event log
    goes to the bench's scratch directory instead of ./runs, and ``--metrics-linger 0`` skips
    the grace period that keeps the endpoint up after the job for a last scrape.
    """
    return ["--event-log", str(workdir / "events.jsonl"), "--metrics-linger", "0"]


def launcher_argv(name: str, rdzv: str, workdir: Path) -> list[str]:
    """The command prefix (up to the script) for ``name`` on rendezvous ``rdzv``."""
    if name == THEIRS:
        return [sys.executable, "-m", "torch.distributed.run", *rdzv_flags(rdzv)]
    if name == OURS:
        return [sys.executable, "-m", "agent", "run", *rdzv_flags(rdzv), *ours_flags(workdir)]
    raise ValueError(f"unknown launcher {name!r}")


# The shim runs a launcher in-process with its agent's _monitor_workers wrapped: when a check
# reports FAILED for the first time, the time at which that check began is written to
# $BENCH_NOTICE_FILE. The wrapper costs a time.time() call per check.
SHIM = """\
import os, sys, time
which = sys.argv[1]
if which == "elastiscope":
    import agent.local as agent_module
    from agent.cli import entry  # what the console script runs
    sys.argv = ["elastiscope", "run", *sys.argv[2:]]
    launch = lambda: entry()
else:
    import torch.distributed.elastic.agent.server.local_elastic_agent as agent_module
    from torch.distributed.run import main
    launch = lambda: sys.exit(main(sys.argv[2:]))
notice_file = os.environ["BENCH_NOTICE_FILE"]
original = agent_module.LocalElasticAgent._monitor_workers
def stamped(self, worker_group):
    began = time.time()
    result = original(self, worker_group)
    if result.state.name == "FAILED" and not os.path.exists(notice_file):
        with open(notice_file, "w") as f:
            f.write(repr(began))
    return result
agent_module.LocalElasticAgent._monitor_workers = stamped
launch()
"""


def shim_argv(name: str, rdzv: str, workdir: Path) -> list[str]:
    """Like launcher_argv, through the notice-stamping shim."""
    flags = rdzv_flags(rdzv) + (ours_flags(workdir) if name == OURS else [])
    return [sys.executable, "-c", SHIM, name, *flags]


# ---- worker scripts ------------------------------------------------------------------------

NOOP_WORKER = """\
import os, sys
with open(os.path.join(sys.argv[1], "pid." + os.environ["RANK"]), "w") as f:
    f.write(str(os.getpid()))
"""

SLEEP_WORKER = """\
import os, sys, time
with open(os.path.join(sys.argv[1], "pid." + os.environ["RANK"]), "w") as f:
    f.write(str(os.getpid()))
time.sleep(float(sys.argv[2]))
"""

# Attempt 0: rank 0 stamps its exit and leaves with os._exit(1), so the stamp is the exit
# itself and not the start of interpreter teardown; the others sleep. Attempt 1: everyone
# stamps its start and exits 0.
CRASH_ONCE_WORKER = """\
import os, sys, time
started = time.time()
out = sys.argv[1]
rank = os.environ["RANK"]
attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
with open(os.path.join(out, "start.%s.%s" % (attempt, rank)), "w") as f:
    f.write(repr(started))
if attempt == "0":
    if rank == "0":
        time.sleep(float(sys.argv[2]))
        with open(os.path.join(out, "exit"), "w") as f:
            f.write(repr(time.time()))
        os._exit(1)
    time.sleep(120)
"""


def write_script(workdir: Path, name: str, text: str) -> Path:
    path = workdir / name
    path.write_text(text)
    return path


def wait_for_files(directory: Path, pattern: str, count: int, proc: subprocess.Popen,
                   timeout: float) -> list[Path]:
    """Poll (every 20 ms, until ``timeout``) until ``count`` files match ``pattern``."""
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(directory.glob(pattern))
        if len(found) >= count:
            return found
        if proc.poll() is not None:
            raise RunFailed(f"launcher exited {proc.returncode} with {len(found)}/{count} workers up")
        if time.monotonic() > deadline:
            raise RunFailed(f"{len(found)}/{count} workers up after {timeout:.0f} s")
        time.sleep(0.02)


# ---- the agent side of a process tree ------------------------------------------------------


def agent_side(launcher: psutil.Process, worker_pids: set[int]) -> list[psutil.Process]:
    """The launcher and every descendant that is not a worker (our spawner and standbys)."""
    procs = [launcher]
    try:
        children = launcher.children(recursive=True)
    except psutil.NoSuchProcess:
        return procs
    return procs + [c for c in children if c.pid not in worker_pids]


def _thread_cpu_ns(pid: int) -> dict[int, int] | None:
    """{tid: CPU nanoseconds} of every live thread of ``pid``, from the scheduler's accounting.

    psutil's cpu_times come in clock ticks (10 ms), too coarse for an agent that uses a few
    milliseconds a second; /proc/<pid>/task/<tid>/schedstat counts nanoseconds.
    """
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    out = {}
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return out


def cpu_seconds(procs: Iterable[psutil.Process]) -> dict[tuple[int, int], float]:
    """{(pid, tid): CPU seconds so far} for the live threads of ``procs``."""
    out = {}
    for p in procs:
        threads = _thread_cpu_ns(p.pid)
        if threads is None:
            continue
        for tid, ns in threads.items():
            out[(p.pid, tid)] = ns / 1e9
    return out


def cpu_used(before: dict, after: dict) -> float:
    """CPU seconds used between two readings by the threads alive at both."""
    return sum(after[k] - before[k] for k in before.keys() & after.keys())


def cpu_breakdown(before: dict, after: dict, launcher_pid: int) -> dict[str, float]:
    """CPU seconds split into the launcher's main thread, its other threads, and helper processes."""
    out = {"launcher_main_thread": 0.0, "launcher_other_threads": 0.0, "helper_processes": 0.0}
    for pid, tid in before.keys() & after.keys():
        used = after[(pid, tid)] - before[(pid, tid)]
        if pid != launcher_pid:
            out["helper_processes"] += used
        elif tid == pid:
            out["launcher_main_thread"] += used
        else:
            out["launcher_other_threads"] += used
    return out


def memory_bytes(procs: Iterable[psutil.Process]) -> tuple[int, int]:
    """(RSS, PSS) summed over ``procs``; PSS splits shared pages, RSS counts them in each."""
    rss = pss = 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


def worker_pids(directory: Path) -> set[int]:
    pids = set()
    for f in directory.glob("pid.*"):
        try:
            pids.add(int(f.read_text()))
        except ValueError:
            pass
    return pids


def scratch(parent: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=parent))


# ---- the three jobs every bench is made of -------------------------------------------------


def launch_noop(name: str, rdzv: str, nproc: int, workdir: Path, timeout: float = 180.0,
                interval: float | None = 0.01, extra_flags: Sequence[str] = ()) -> dict:
    """A no-op job: wall time from exec to exit, and the agent side's peak memory.

    The launcher's own peak is its ``ru_maxrss`` from ``wait4``. With ``interval=None`` nothing
    is sampled (sampling walks /proc, which takes CPU from the run it measures). Helper processes (our
    spawner, standbys) are sampled every ``interval``; a sample counts only once the helper
    has exec'd (its command line differs from the launcher's): between fork and exec a child
    shows its parent's shared pages as its own RSS, which torchrun's workers and our spawner
    both go through. Workers are told apart by the pid files they write. ``extra_flags`` go
    to the launcher after its usual flags. The launchers run with bytecode caching on (see
    :func:`_launch_env`).
    """
    out = scratch(workdir)
    script = write_script(workdir, "noop.py", NOOP_WORKER)
    argv = [*launcher_argv(name, rdzv, out), *extra_flags, "--nproc-per-node", str(nproc), str(script),
            str(out)]
    stderr_path = out / "launcher.stderr"
    helpers: dict[int, int] = {}
    started = time.perf_counter()
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(argv, env=_launch_env(), cwd=out, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + timeout
    root = psutil.Process(proc.pid)
    root_cmdline = list(argv)  # what /proc shows for the launcher once it has exec'd
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            wall = time.perf_counter() - started
            break
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RunFailed(f"did not finish in {timeout:.0f} s")
        if interval is not None:
            _sample_helpers(root, root_cmdline, helpers)
        time.sleep(interval or 0.002)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RunFailed(f"exit status {proc.returncode}: {failure_line(stderr_path.read_text(errors='replace'))}")
    workers = worker_pids(out)
    if len(workers) != nproc:
        raise RunFailed(f"{len(workers)}/{nproc} workers ran")
    helper_peaks = [rss for pid, rss in helpers.items() if pid not in workers]
    launcher_rss = usage.ru_maxrss * 1024
    if interval is None:
        return {"wall_s": wall, "launcher_rss_bytes": launcher_rss}
    return {"sampled_wall_s": wall, "launcher_rss_bytes": launcher_rss, "helpers_rss_bytes": sum(helper_peaks),
            "agent_rss_bytes": launcher_rss + sum(helper_peaks), "helper_processes": len(helper_peaks)}


def _launch_env() -> dict[str, str]:
    """``bench_env()`` with Python's bytecode cache allowed, as on a user's machine.

    An installed package has its modules compiled (pip compiles them at install, as it did
    torch's in site-packages); a source checkout gets them at its first run. Some sandboxes set
    PYTHONDONTWRITEBYTECODE, and then every launch compiled elastiscope's modules anew (about
    2 MiB of the launcher's peak RSS here) while torchrun's came compiled: the first (warm-up)
    run now leaves them compiled, for both launchers alike.
    """
    env = bench_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _sample_helpers(root: psutil.Process, root_cmdline: list[str], peaks: dict[int, int]) -> None:
    try:
        children = root.children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            if child.cmdline() == root_cmdline:
                continue  # forked, not yet exec'd
            rss = child.memory_info().rss
        except psutil.Error:
            continue
        peaks[child.pid] = max(peaks.get(child.pid, 0), rss)


def crash_once(name: str, rdzv: str, nproc: int, workdir: Path, crash_after: float = 0.5,
               timeout: float = 180.0) -> dict:
    """The crash-once job through the shim: restart latency and failure detection latency."""
    out = scratch(workdir)
    script = write_script(workdir, "crash_once.py", CRASH_ONCE_WORKER)
    notice_file = out / "notice"
    argv = [*shim_argv(name, rdzv, out), "--nproc-per-node", str(nproc), "--max-restarts", "1",
            str(script), str(out), str(crash_after)]
    proc = subprocess.run(argv, env=bench_env(BENCH_NOTICE_FILE=str(notice_file)), cwd=out,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RunFailed(f"exit status {proc.returncode}: {failure_line(proc.stderr)}")
    exited = float((out / "exit").read_text())
    restarted = [float(p.read_text()) for p in out.glob("start.1.*")]
    if len(restarted) != nproc:
        raise RunFailed(f"{len(restarted)}/{nproc} workers restarted")
    result = {
        "restart_latency_s": min(restarted) - exited,
        "restart_all_up_s": max(restarted) - exited,
        "notice_latency_s": float(notice_file.read_text()) - exited if notice_file.exists() else None,
    }
    if name == OURS:
        result.update(_live_failure_event(out / "events.jsonl", exited))
    return result


def _live_failure_event(event_log: Path, exited: float) -> dict:
    """From our event log: the live failure event's latency, and the restart's rendezvous time.

    Latency of ``elastiscope.worker.failed`` = its timestamp (ms) - the worker's exit stamp.
    The second ``torchelastic.worker.status.RENDEZVOUS`` event carries how long the restart's
    rendezvous took (``duration_ms``), which explains most of a restart on c10d.
    """
    out = {"event_latency_s": None, "event_detect_latency_s": None, "restart_rendezvous_s": None}
    try:
        lines = event_log.read_text().splitlines()
    except OSError:
        return out
    rendezvous = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        meta = event.get("metadata") or {}
        if event.get("name") == "elastiscope.worker.failed" and out["event_latency_s"] is None:
            detect = meta.get("detect_latency_ms")
            out["event_latency_s"] = event["timestamp"] / 1000.0 - exited
            out["event_detect_latency_s"] = detect / 1000.0 if detect is not None else None
        elif event.get("name") == "torchelastic.worker.status.RENDEZVOUS" and meta.get("duration_ms") is not None:
            rendezvous.append(meta["duration_ms"] / 1000.0)
    if len(rendezvous) >= 2:
        out["restart_rendezvous_s"] = rendezvous[1]
    return out


def steady_state(name: str, rdzv: str, nproc: int, workdir: Path, settle: float = 5.0,
                 window: float = 5.0, memory_samples: int = 5, timeout: float = 180.0) -> dict:
    """Sleeping workers: the agent side's CPU over ``window`` and its memory during it."""
    out = scratch(workdir)
    script = write_script(workdir, "sleep.py", SLEEP_WORKER)
    sleep_for = settle + window + 3.0
    argv = [*launcher_argv(name, rdzv, out), "--nproc-per-node", str(nproc), str(script), str(out),
            str(sleep_for)]
    stderr_path = out / "launcher.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(argv, env=bench_env(), cwd=out, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for_files(out, "pid.*", nproc, proc, timeout)
        workers = worker_pids(out)
        launcher = psutil.Process(proc.pid)
        # Start-up work (the endpoint's imports on its thread, standbys, first resource samples)
        # can outlast the workers' start by seconds on a busy machine.
        time.sleep(settle)
        procs = agent_side(launcher, workers)
        before = cpu_seconds(procs)
        began = time.monotonic()
        rss, pss = [], []
        for i in range(memory_samples):
            time.sleep(window / memory_samples)
            r, p = memory_bytes(agent_side(launcher, workers))
            rss.append(r)
            pss.append(p)
        procs = agent_side(launcher, workers)
        after = cpu_seconds(procs)
        elapsed = time.monotonic() - began
        split = cpu_breakdown(before, after, launcher.pid)
        status = proc.wait(sleep_for + 60)
        if status != 0:
            raise RunFailed(f"exit status {status}: {failure_line(stderr_path.read_text(errors='replace'))}")
        return {
            "cpu_ms_per_s": cpu_used(before, after) * 1000.0 / elapsed,
            **{f"cpu_ms_per_s_{part}": used * 1000.0 / elapsed for part, used in split.items()},
            "rss_bytes": statistics.median(rss),
            "pss_bytes": statistics.median(pss),
            "agent_processes": len(procs),
        }
    finally:
        if proc.poll() is None:
            try:
                proc.wait(sleep_for + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_json(script: str, *args: str, timeout: float = 1800.0) -> dict:
    """Run another bench script with ``--json`` and return what it printed."""
    argv = [sys.executable, str(BENCH / script), *args, "--json"]
    proc = subprocess.run(argv, env=bench_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise RuntimeError(f"{script} exited {proc.returncode} without JSON: "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}") from None
    if isinstance(data, dict):
        data.setdefault("exit_status", proc.returncode)
    return data
