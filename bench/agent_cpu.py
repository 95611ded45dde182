"""Agent CPU while its workers sleep: ``elastiscope run`` against torchrun, side by side.

The job: 4 workers that sleep, one node. Each launcher runs it through its real command line
with its defaults (ours: the HTTP endpoint on, the event log written; see
``common.launcher_argv``). Once every worker has started and a settle period has passed, the
scheduler's CPU time of every thread of the launcher and of every descendant that is not a
worker (our spawner and standby interpreters) is read at the start and the end of the window
(``common.steady_state``, the same measurement as ``run_all.py --only steady``). Launchers
alternate, several repetitions each; medians (min-max) are printed in CPU milliseconds per
wall second, split into the launcher's main thread, its other threads and helper processes.

Goal (issue 3): ours <= torchrun's.

    python bench/agent_cpu.py [--repetitions 5] [--window 10] [--settle 5] [--rdzv c10d] [--json]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import OURS, THEIRS  # noqa: E402

PARTS = ("cpu_ms_per_s", "cpu_ms_per_s_launcher_main_thread", "cpu_ms_per_s_launcher_other_threads",
         "cpu_ms_per_s_helper_processes")
LABELS = ("total", "main thread", "other threads", "helpers")


def measure(reps: int, window: float, settle: float, rdzv: str, nproc: int = 4,
            progress=None) -> dict:
    load_before = common.load_average()
    with tempfile.TemporaryDirectory(prefix="agent_cpu_") as tmp:
        rows, failures = common.ab_runs(
            reps,
            lambda rep, name: common.steady_state(name, rdzv, nproc, Path(tmp), settle=settle,
                                                  window=window),
            progress, "agent_cpu",
        )
    launchers = {name: common.summaries(r) for name, r in rows.items()}
    return {
        "reps": reps, "window_s": window, "settle_s": settle, "nproc": nproc, "rdzv": rdzv,
        "load_average_before": load_before, "load_average_after": common.load_average(),
        "failures": failures, "launchers": launchers,
        "ratio": common.ratio(launchers[OURS]["cpu_ms_per_s"], launchers[THEIRS]["cpu_ms_per_s"]),
    }


def _cell(summary: dict) -> str:
    return f"{summary['median']:.2f} ({summary['min']:.2f}-{summary['max']:.2f})"


def report(result: dict) -> str:
    lines = [
        f"{result['reps']} repetitions each, alternating; {result['window_s']:.0f} s window after "
        f"{result['settle_s']:.0f} s settle; {result['nproc']} sleeping workers, rdzv {result['rdzv']}; "
        f"load average {result['load_average_before']} -> {result['load_average_after']}",
        "",
        f"{'CPU ms per s':14s}" + "".join(f"{label:>22s}" for label in LABELS),
    ]
    for name in (OURS, THEIRS):
        summary = result["launchers"][name]
        lines.append(f"{name:14s}" + "".join(f"{_cell(summary[p]):>22s}" for p in PARTS))
    ratio = result["ratio"]
    verdict = "met" if ratio is not None and ratio <= 1.0 else "NOT met"
    lines += ["", f"ratio (medians) {ratio:.2f}x   goal {OURS} <= {THEIRS}: {verdict}"]
    for name, failed in result["failures"].items():
        for failure in failed:
            lines.append(f"failed run of {name}: {failure}")
    return "\n".join(lines)


def main() -> int:
    p = common.OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--window", type=float, default=10.0, help="seconds measured")
    p.add_argument("--settle", type=float, default=5.0, help="seconds skipped after the workers start")
    p.add_argument("--rdzv", choices=("c10d", "static"), default="c10d",
                   help="c10d: --standalone (default); static: torch's static rendezvous")
    p.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = p.parse_args()
    progress = None if args.json else (lambda line: print(line, flush=True))
    try:
        result = measure(args.repetitions, args.window, args.settle, args.rdzv, progress=progress)
    except common.RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else "\n" + report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
