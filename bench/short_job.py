"""A short job's wall time: a 1-second script under ``elastiscope run`` with its defaults, and under
``torchrun``.

    python bench/short_job.py [--reps 7] [--nproc 1] [--seconds 1] [--json results.json]

What a user notices first: a job whose work takes a second should not take much longer than
under torchrun. ``elastiscope run`` runs exactly as a user starts it (endpoint on at a free port,
event log in ./runs, ``--metrics-linger`` at its default): nothing scrapes its endpoint, so it
must not wait for a final scrape. ``torchrun`` gets ``--standalone`` (one node on an embedded c10d
store at a free port, which is also our default for one node; torchrun's own default, a static
store on port 29500, collides on a shared machine). The two alternate, which goes first flipping
every repetition, after one discarded warm-up each; wall time is exec to exit, measured from here.

Goal (issue 17): our median within 1 s of torchrun's. Exit status 1 if a run failed or the goal
is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

OURS, THEIRS = "elastiscope run", "torchrun"
GOAL_SECONDS = 1.0


def launcher_argv(name: str, nproc: int, script: Path) -> list[str]:
    if name == OURS:
        return [sys.executable, "-m", "agent", "run", "--nproc-per-node", str(nproc), str(script)]
    torchrun = shutil.which("torchrun") or "torchrun"
    return [torchrun, "--standalone", "--nproc-per-node", str(nproc), str(script)]


def wall_time(name: str, nproc: int, script: Path, workdir: Path) -> float:
    """Seconds from exec to exit of one run; RunFailed if it did not succeed."""
    started = time.monotonic()
    proc = subprocess.run(launcher_argv(name, nproc, script), cwd=workdir, env=common.bench_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=300)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise common.RunFailed(f"{name} exited {proc.returncode}: "
                               f"{common.failure_line(proc.stderr)}")
    return elapsed


def measure(reps: int, nproc: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="short_job_") as tmp:
        workdir = Path(tmp)
        script = workdir / "one_second.py"
        script.write_text(f"import time\ntime.sleep({seconds!r})\n")
        for name in (OURS, THEIRS):  # warm-up: page cache, bytecode; not counted
            wall_time(name, nproc, script, workdir)
        samples: dict[str, list[float]] = {OURS: [], THEIRS: []}
        failures: list[str] = []
        for _, name in common.alternating(reps, [OURS, THEIRS]):
            try:
                samples[name].append(wall_time(name, nproc, script, workdir))
            except (common.RunFailed, subprocess.TimeoutExpired) as e:
                failures.append(str(e))
    summary = {name: common.summarize(values) for name, values in samples.items()}
    return {"summary": summary, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--nproc", type=int, default=1, help="workers (default 1, both launchers' default)")
    p.add_argument("--seconds", type=float, default=1.0, help="how long the script works")
    p.add_argument("--json", type=Path, help="write the raw results here")
    args = p.parse_args(argv)

    info = common.machine_info()
    result = measure(args.reps, args.nproc, args.seconds)
    info["load_average_end"] = common.load_average()
    ours, theirs = result["summary"][OURS], result["summary"][THEIRS]
    for name, s in result["summary"].items():
        print(f"{name:16s} wall median {s['median']:.2f} s  (min {s['min']:.2f}, max {s['max']:.2f}, "
              f"n={s['n']})")
    difference = ours["median"] - theirs["median"]
    met = difference <= GOAL_SECONDS and not result["failures"]
    print(f"difference {difference:+.2f} s (goal: within {GOAL_SECONDS:g} s): "
          f"{'met' if met else 'MISSED'}; load average {info['load_average_start']} -> "
          f"{info['load_average_end']}")
    for failure in result["failures"]:
        print(f"failed run: {failure}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": vars(args) | {"json": str(args.json)},
                                         **result}, indent=2))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
