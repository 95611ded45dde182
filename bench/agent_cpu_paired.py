"""Agent CPU of this tree against an older commit's, both running at the same time.

    python bench/agent_cpu_paired.py [--baseline 77e3e9c] [--new COMMIT] [--reps 3] [--window 30] [--settle 20] [--json]

Why paired and simultaneous: the agent's steady CPU is a fraction of a millisecond per second,
and a machine's load drifts by more than that between runs taken one after the other. Here the
two agents (this working tree, or ``--new``, and ``--baseline``, each commit checked out into a
temporary git worktree)
each run the same job at the same time, so drift falls on both alike: ``elastiscope run
--standalone`` with 4 workers that sleep, the endpoint and the event log on (the defaults).
After ``--settle`` seconds, the scheduler's CPU time of every thread of each agent process is
read from ``/proc/<pid>/task/*/schedstat`` at the start and the end of a ``--window``
(``common.cpu_seconds``, as ``bench/agent_cpu.py`` reads it; threads alive at both readings). Each
repetition starts the two in the other order. Figures: CPU milliseconds per wall second, the
agent's main thread and its other threads, medians (min-max) over the repetitions, and the
ratio new/old per repetition.

The default baseline, 77e3e9c, is the commit before the restructuring (issue 12).
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

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import common  # noqa: E402  (per-thread CPU from schedstat, as bench/agent_cpu.py reads it)

SLEEPER = "import sys, time\ntime.sleep(float(sys.argv[1]))\n"


def agent_cpu(agent: subprocess.Popen) -> dict:
    """{(pid, tid): CPU seconds so far} of the agent process's threads."""
    return common.cpu_seconds([psutil.Process(agent.pid)])


def one_pair(trees: dict[str, Path], order: list[str], window: float, settle: float, tmp: Path) -> dict:
    agents = {}
    for name in order:
        folder = tmp / name
        folder.mkdir()
        (folder / "sleeper.py").write_text(SLEEPER)
        env = dict(os.environ, PYTHONPATH=str(trees[name]), OMP_NUM_THREADS="1")
        agents[name] = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--standalone", "--nproc-per-node", "4",
             "--event-log", str(folder / "events.jsonl"), "--metrics-linger", "0",
             str(folder / "sleeper.py"), str(settle + window + 5)],
            cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(settle)  # start-up (imports, rendezvous, worker launch) is not the steady state
    before = {name: agent_cpu(agent) for name, agent in agents.items()}
    time.sleep(window)
    after = {name: agent_cpu(agent) for name, agent in agents.items()}
    result = {}
    for name, agent in agents.items():
        parts = common.cpu_breakdown(before[name], after[name], agent.pid)
        main = parts["launcher_main_thread"] * 1000 / window
        others = parts["launcher_other_threads"] * 1000 / window
        result[name] = {"main_thread": main, "other_threads": others, "total": main + others}
    for name, agent in agents.items():
        if agent.wait(timeout=120) != 0:
            raise RuntimeError(f"the {name} agent exited with {agent.returncode}")
    return result


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="77e3e9c", help="the older commit (default 77e3e9c)")
    parser.add_argument("--new", help="a commit to take as the new side (default: this working tree)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    commits = {"old": args.baseline, **({"new": args.new} if args.new else {})}
    with tempfile.TemporaryDirectory(prefix="agent-cpu-paired-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            with common.checked_out(commits, tmp) as worktrees:
                trees = {"new": REPO, **worktrees}
                pairs = []
                for rep in range(args.reps):
                    order = ["new", "old"] if rep % 2 == 0 else ["old", "new"]
                    run_dir = tmp / f"rep{rep}"
                    run_dir.mkdir()
                    pairs.append(one_pair(trees, order, args.window, args.settle, run_dir))
        except common.CheckoutFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    ratios = [pair["new"]["total"] / pair["old"]["total"] for pair in pairs]
    if args.json:
        print(json.dumps({"baseline": args.baseline, "new": args.new or "working tree", "pairs": pairs, "ratio_new_over_old": ratios,
                          "load_average": os.getloadavg()}, indent=2))
        return 0
    print(f"agent CPU, ms per wall second, {args.reps} paired runs, new = {args.new or 'this working tree'}, "
          f"old = {args.baseline}, load {os.getloadavg()[0]:.1f}:")
    for name in ("new", "old"):
        print(f"  {name:3s} total {summary([p[name]['total'] for p in pairs])}  main thread "
              f"{summary([p[name]['main_thread'] for p in pairs])}  other threads "
              f"{summary([p[name]['other_threads'] for p in pairs])}")
    print("  new/old per run: " + ", ".join(f"{r:.3f}" for r in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
