"""Restart latency, Elastiscope's local agent against torchrun, on the same job in one run.

The job: 4 workers; on attempt 0, rank 0 exits 1 after 0.5 s while the others sleep; on
attempt 1 every worker exits 0 at once (max_restarts=1). Restart latency is

    first worker start of attempt 1  -  the failing worker's exit

both stamped with time.time() inside the workers, so each launcher is measured the same way
and from the outside. Launchers alternate, several repetitions each; the medians and their
ratio are printed. Goal: ours <= 0.25 x torchrun's.

    python bench/restart_latency.py [--repetitions 7] [--all] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ELASTISCOPE = [sys.executable, "-m", "agent", "run", "--metrics-linger", "0"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _static(base: list[str]):
    return lambda: [*base, "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]


# Launchers in pairs on the same rendezvous backend, so each ratio compares like with like.
# static: torchrun's default backend (one node, a master port). c10d: --standalone, where
# torch's c10d handler sleeps a random 0-0.3 s before a rendezvous while its round counter is
# still 0 -- the first restart included -- for both launchers alike.
LAUNCHERS = {
    "torchrun-static": _static(TORCHRUN),
    "elastiscope-static": _static(ELASTISCOPE),
    "torchrun-c10d": lambda: [*TORCHRUN, "--standalone"],
    "elastiscope-c10d": lambda: [*ELASTISCOPE, "--standalone"],
}
PAIRS = [("elastiscope-static", "torchrun-static"), ("elastiscope-c10d", "torchrun-c10d")]
# With --all, ours without warm standbys too: every restart pays interpreter start-up.
EXTRA_LAUNCHERS = {
    "elastiscope-static-cold": lambda: [
        sys.executable, str(HERE / "_launch.py"), "--rdzv-backend", "static", "--no-warm-standby",
    ],
}
JOB_FLAGS = ["--nproc-per-node", "4", "--max-restarts", "1"]
GOAL_RATIO = 0.25

WORKER = """\
import os, sys, time
started = time.time()
rank = int(os.environ["RANK"])
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
out = sys.argv[1]
with open(os.path.join(out, f"start.{attempt}.{rank}"), "w") as f:
    f.write(repr(started))
if attempt == 0:
    if rank == 0:
        time.sleep(0.5)
        with open(os.path.join(out, "exit"), "w") as f:
            f.write(repr(time.time()))
        sys.exit(1)
    time.sleep(60)
"""


def run_once(launcher: list[str], worker: Path, workdir: Path, timeout: float) -> float:
    """One job under ``launcher``; returns the restart latency in seconds."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        [*launcher, *JOB_FLAGS, str(worker), str(out)], cwd=out,
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{launcher[:3]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    failed_exit = float((out / "exit").read_text())
    restarts = [float(p.read_text()) for p in out.glob("start.1.*")]
    if len(restarts) != 4:
        raise RuntimeError(f"expected 4 restarted workers, found {len(restarts)}")
    return min(restarts) - failed_exit


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repetitions", type=int, default=7)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--all", action="store_true", help="also time ours without warm standbys")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = p.parse_args()

    launchers = dict(LAUNCHERS, **(EXTRA_LAUNCHERS if args.all else {}))
    samples: dict[str, list[float]] = {name: [] for name in launchers}
    with tempfile.TemporaryDirectory(prefix="restart_latency_") as tmp:
        workdir = Path(tmp)
        worker = workdir / "worker.py"
        worker.write_text(WORKER)
        for rep in range(args.repetitions):
            # Alternate who goes first so that neither always runs on a warmer machine.
            order = list(launchers) if rep % 2 == 0 else list(reversed(launchers))
            for name in order:
                try:
                    latency = run_once(launchers[name](), worker, workdir, args.timeout)
                except Exception as e:  # one line, not a traceback
                    print(f"error: {name}: {e}", file=sys.stderr)
                    return 1
                samples[name].append(latency)
                print(f"rep {rep}: {name:24s} restart latency {latency * 1000:8.1f} ms",
                      file=sys.stderr if args.json else sys.stdout, flush=True)
                time.sleep(0.2)  # let the previous job's processes finish exiting

    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratios = {ours: medians[ours] / medians[theirs] for ours, theirs in PAIRS}
    if args.json:
        print(json.dumps({
            "samples_ms": {k: [v * 1000 for v in vs] for k, vs in samples.items()},
            "median_ms": {k: v * 1000 for k, v in medians.items()},
            "ratios": {f"{ours}/{theirs}": ratios[ours] for ours, theirs in PAIRS},
            "goal_ratio": GOAL_RATIO,
        }))
        return 0
    print()
    for name, values in samples.items():
        spread = ", ".join(f"{v * 1000:.0f}" for v in sorted(values))
        print(f"{name:24s} median {medians[name] * 1000:8.1f} ms  (ms: {spread})")
    for ours, theirs in PAIRS:
        verdict = "met" if ratios[ours] <= GOAL_RATIO else "NOT met"
        print(f"ratio {ours}/{theirs}: {ratios[ours]:.3f}   goal <= {GOAL_RATIO}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
