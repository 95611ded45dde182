"""Failure detection and restart latency: ``elastiscope run`` against ``torchrun``, same job, same run.

    python bench/detection_latency.py [--reps 7] [--nproc 4] [--rdzv c10d|static|both] [--json]

The crash-once job: N workers; on attempt 0, rank 0 stamps ``time.time()`` and leaves with
``os._exit(1)`` after a delay while the others sleep; on attempt 1 every worker stamps its start
and exits 0 (``--max-restarts 1``). From each run:

* restart latency = first worker start of attempt 1 - the failing worker's exit stamp;
* notice latency = when the agent's run loop began the check that reported FAILED (its
  ``_monitor_workers`` is wrapped by a shim to stamp this; the same wrapper for both) - exit;
* for ours, the live event: the ``elastiscope.worker.failed`` timestamp in the event log
  (milliseconds, so up to 1 ms early) - exit, and the event's own ``detect_latency_ms``
  (the agent's reaper saw the exit -> the event was published). torchrun publishes no event
  when a worker fails (its per-worker events come at the end of the run), so its figure is the
  notice latency: it polls every ``--monitor-interval`` (0.1 s).

The crash delay varies from one repetition to the next over one monitor interval (0.5 s +
0-0.1 s, the same sequence for both launchers), so a polling agent is not flattered or
penalised by a fixed phase. Launchers alternate which goes first.
Goals: restart latency ours/torchrun <= 0.25, live detection median <= 5 ms.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import OURS, THEIRS  # noqa: E402

RESTART_RATIO_GOAL = 0.25
DETECTION_GOAL_S = 0.005
MONITOR_INTERVAL_S = 0.1


def crash_delays(reps: int, seed: int = 8) -> list[float]:
    rng = random.Random(seed)
    return [0.5 + rng.random() * MONITOR_INTERVAL_S for _ in range(reps)]


def measure(reps: int = 7, nproc: int = 4, rdzv: str = "c10d", progress=None) -> dict:
    """Alternating A/B runs of the crash-once job; summaries per launcher and metric."""
    delays = crash_delays(reps)
    with tempfile.TemporaryDirectory(prefix="crash_once_") as tmp:
        rows, failures = common.ab_runs(
            reps, lambda rep, name: common.crash_once(name, rdzv, nproc, Path(tmp), crash_after=delays[rep]),
            progress, label=f"crash-once {rdzv} n={nproc}")
    out = {"rdzv": rdzv, "nproc": nproc, "reps": reps, "failures": failures,
           "launchers": {name: common.summaries(r) for name, r in rows.items()}}
    ours, theirs = out["launchers"][OURS], out["launchers"][THEIRS]
    out["restart_ratio"] = common.ratio(ours.get("restart_latency_s"), theirs.get("restart_latency_s"))
    live = ours.get("event_latency_s")
    out["live_detection_median_s"] = live["median"] if live else None
    return out


def _ms(summary: dict | None) -> str:
    if not summary:
        return "-"
    return f"{summary['median'] * 1000:7.1f} ms ({summary['min'] * 1000:.1f}-{summary['max'] * 1000:.1f})"


def main() -> int:
    p = common.OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--nproc", type=int, default=4)
    p.add_argument("--rdzv", choices=("c10d", "static", "both"), default="both")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args()
    if args.reps < 1 or args.nproc < 1:
        print("error: --reps and --nproc must be at least 1", file=sys.stderr)
        return 2

    progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    results = {}
    for rdzv in (("c10d", "static") if args.rdzv == "both" else (args.rdzv,)):
        try:
            results[rdzv] = measure(args.reps, args.nproc, rdzv, progress)
        except Exception as e:  # one line, not a traceback
            print(f"error: {rdzv}: {e}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for rdzv, r in results.items():
        print(f"\n{rdzv} rendezvous, {r['nproc']} workers, {r['reps']} alternating reps, median (min-max):")
        for name, s in r["launchers"].items():
            print(f"  {name:12s} restart {_ms(s.get('restart_latency_s'))}   notice {_ms(s.get('notice_latency_s'))}"
                  + (f"   ({len(r['failures'][name])} failed run(s))" if r["failures"][name] else ""))
        ours = r["launchers"][OURS]
        print(f"  live event   {_ms(ours.get('event_latency_s'))} after the exit; "
              f"detect_latency_ms {_ms(ours.get('event_detect_latency_s'))}")
        print(f"  restart ratio ours/torchrun {r['restart_ratio']:.3f} (goal <= {RESTART_RATIO_GOAL}); "
              f"live detection goal <= {DETECTION_GOAL_S * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
