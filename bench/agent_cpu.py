"""Agent CPU while its workers sleep: Elastiscope's local agent against torchrun.

The job: 4 workers that each write a start file and then sleep. Once every worker has
started and a settle period has passed (start-up work, standbys, first samples), the CPU
time (scheduler run time of every thread) of the launcher process and of every descendant that is not a worker
(our spawner and standby interpreters, if any) is read, and read again after the measuring
window. Launchers alternate, several repetitions each; medians are printed in CPU
milliseconds per wall second. Goal: ours <= torchrun's.

    python bench/agent_cpu.py [--repetitions 5] [--window 5] [--max-restarts 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The two launchers. Switching ours to the real CLI is this one line:
#   "elastiscope": ["elastiscope", "run", "--standalone"],
LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone"],
    "elastiscope": [sys.executable, str(HERE / "_launch.py"), "--rdzv-backend", "static"],
}

WORKER = """\
import os, sys, time
out, rank = sys.argv[1], os.environ["RANK"]
with open(os.path.join(out, f".start.{rank}"), "w") as f:
    f.write(str(os.getpid()))
os.replace(os.path.join(out, f".start.{rank}"), os.path.join(out, f"start.{rank}"))
time.sleep(float(sys.argv[2]))
"""


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of every thread of ``proc``, in nanosecond resolution.

    /proc/<pid>/stat counts in clock ticks (10 ms here): an idle agent spends a few of those
    in 5 s, too coarse to compare. The scheduler's run time per thread is exact.
    """
    total_ns = 0
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        try:
            total_ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):  # a thread that just ended
            pass
    return total_ns / 1e9


def helpers_cpu(launcher: psutil.Process, worker_pids: set[int]) -> tuple[float, int]:
    """CPU seconds of the launcher and its non-worker descendants, and how many there are."""
    total, count = cpu_seconds(launcher), 1
    for child in launcher.children(recursive=True):
        if child.pid in worker_pids:
            continue
        try:
            total += cpu_seconds(child)
            count += 1
        except (psutil.NoSuchProcess, FileNotFoundError):
            pass
    return total, count


def run_once(launcher: list[str], worker: Path, workdir: Path, args) -> tuple[float, int]:
    """One job; returns (agent CPU ms per wall second, number of agent-side processes)."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    sleep_for = args.settle + args.window + 2.0
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen(
        [*launcher, "--nproc-per-node", "4", "--max-restarts", str(args.max_restarts),
         str(worker), str(out), str(sleep_for)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("start.*"))) < 4:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{launcher[:3]}: workers did not start (exit {proc.returncode})")
            time.sleep(0.05)
        worker_pids = {int(p.read_text()) for p in out.glob("start.*")}
        launcher_proc = psutil.Process(proc.pid)
        time.sleep(args.settle)
        before, _ = helpers_cpu(launcher_proc, worker_pids)
        started = time.monotonic()
        time.sleep(args.window)
        after, count = helpers_cpu(launcher_proc, worker_pids)
        elapsed = time.monotonic() - started
        return (after - before) * 1000 / elapsed, count
    finally:
        proc.wait(sleep_for + 60)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--window", type=float, default=5.0, help="seconds measured")
    p.add_argument("--settle", type=float, default=1.0, help="seconds skipped after start")
    p.add_argument("--max-restarts", type=int, default=0)
    args = p.parse_args()

    samples: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    processes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="agent_cpu_") as tmp:
        workdir = Path(tmp)
        worker = workdir / "worker.py"
        worker.write_text(WORKER)
        for rep in range(args.repetitions):
            order = list(LAUNCHERS) if rep % 2 == 0 else list(reversed(LAUNCHERS))
            for name in order:
                try:
                    rate, count = run_once(LAUNCHERS[name], worker, workdir, args)
                except Exception as e:  # one line, not a traceback
                    print(f"error: {name}: {e}", file=sys.stderr)
                    return 1
                samples[name].append(rate)
                processes[name] = count
                print(f"rep {rep}: {name:12s} {rate:6.2f} CPU ms/s over {args.window:.0f} s "
                      f"({count} agent-side processes)", flush=True)

    medians = {name: statistics.median(values) for name, values in samples.items()}
    print()
    for name, values in samples.items():
        spread = ", ".join(f"{v:.2f}" for v in sorted(values))
        print(f"{name:12s} median {medians[name]:6.2f} CPU ms/s   (all: {spread})")
    verdict = "met" if medians["elastiscope"] <= medians["torchrun"] else "NOT met"
    print(f"goal elastiscope <= torchrun: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
