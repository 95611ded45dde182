"""Launch overhead: ``elastiscope run`` against ``torchrun`` on a no-op script with 4 workers.

    python bench/launch_overhead.py [--reps 7] [--nproc 4] [--variants] [--json results.json]

The same measurement as the "Launch overhead" section of ``bench/run_all.py`` (both call
``common.launch_noop``), on its own. Both launchers run with ``--standalone`` (one node on an
embedded c10d store at a free port: torchrun's own default for one node is a static store on
port 29500, which collides on a shared machine), alternating which goes first in each
repetition, after one discarded warm-up each. Measured from the outside, the same way for both:

* wall time: exec to exit, from runs that nothing samples;
* launcher peak RSS: its ``ru_maxrss`` from ``wait4``;
* helper processes' peak RSS (our spawner, standby interpreters; torchrun has none), from
  separate runs that sample them every 10 ms once they have exec'd;
* agent-side peak RSS: launcher plus helpers. Workers are not counted.

``elastiscope run`` keeps its endpoint on (port 0) and writes its event log, as for a user; the
one default changed is ``--metrics-linger 0`` (the end-of-job grace for a last scrape, 5 s by
default, which would otherwise be measured as launch overhead). ``--variants`` adds runs with
the endpoint off, to show what it costs.

Goal: elastiscope wall <= 1.0x and agent-side peak RSS <= 1.1x torchrun's (medians).
Exit status 1 if any run failed (failed runs are retried once and left out of the figures).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

MIB = 2**20
ENDPOINT_OFF = f"{common.OURS} (endpoint off)"
GOAL_WALL, GOAL_RSS = 1.0, 1.1


def measure(reps: int, nproc: int, variants: bool, progress=None) -> dict:
    """Alternating runs of each launcher: {"launchers": {name: summaries}, "failures": ...}."""
    launchers = {common.OURS: (common.OURS, ()), common.THEIRS: (common.THEIRS, ())}
    if variants:
        launchers[ENDPOINT_OFF] = (common.OURS, ("--metrics-port", "off"))
    with tempfile.TemporaryDirectory(prefix="launch_overhead_") as tmp:
        workdir = Path(tmp)

        def run(name: str, interval: float | None) -> dict:
            launcher, extra = launchers[name]
            return common.launch_noop(launcher, "c10d", nproc, workdir, interval=interval, extra_flags=extra)

        for name in launchers:  # warm-up: page cache, .pyc files
            try:
                run(name, None)
            except common.RunFailed as e:
                if progress:
                    progress(f"warm-up {name}: FAILED: {e}")

        def one(rep: int, name: str) -> dict:
            return {**run(name, 0.01), **run(name, None)}

        rows, failures = common.ab_runs(reps, one, progress, label="launch", names=list(launchers))
    return {"reps": reps, "nproc": nproc, "rdzv": "c10d", "failures": failures,
            "launchers": {name: common.summaries(r) for name, r in rows.items()}}


def _cell(summary: dict | None, scale: float, digits: int) -> str:
    if not summary:
        return "-"
    return (f"{summary['median'] * scale:.{digits}f} "
            f"({summary['min'] * scale:.{digits}f}-{summary['max'] * scale:.{digits}f})")


def report(result: dict) -> list[str]:
    launchers = result["launchers"]
    lines = [f"no-op script, {result['nproc']} workers, {result['reps']} alternating reps, "
             f"medians (min-max), load average {common.load_average()}:",
             f"{'launcher':28s} {'wall s':>18s} {'launcher MiB':>18s} {'helpers MiB':>16s} {'agent side MiB':>18s}"]
    for name, row in launchers.items():
        lines.append(f"{name:28s} {_cell(row.get('wall_s'), 1, 2):>18s} "
                     f"{_cell(row.get('launcher_rss_bytes'), 1 / MIB, 1):>18s} "
                     f"{_cell(row.get('helpers_rss_bytes'), 1 / MIB, 1):>16s} "
                     f"{_cell(row.get('agent_rss_bytes'), 1 / MIB, 1):>18s}")
    lines.append("")
    base = launchers[common.THEIRS]
    for name, row in launchers.items():
        if name == common.THEIRS:
            continue
        ratios = {key: common.ratio(row.get(key), base.get(key))
                  for key in ("wall_s", "launcher_rss_bytes", "agent_rss_bytes")}
        row["ratio_to_torchrun"] = ratios
        met = (ratios["wall_s"] is not None and ratios["wall_s"] <= GOAL_WALL
               and ratios["agent_rss_bytes"] is not None and ratios["agent_rss_bytes"] <= GOAL_RSS)
        lines.append(f"{name}: wall {ratios['wall_s']:.2f}x, agent-side peak RSS {ratios['agent_rss_bytes']:.2f}x "
                     f"(launcher alone {ratios['launcher_rss_bytes']:.2f}x) torchrun -> "
                     f"{'meets' if met else 'misses'} the goal (wall <= {GOAL_WALL}x, RSS <= {GOAL_RSS}x)")
    for name, failed in result["failures"].items():
        for failure in failed:
            lines.append(f"run failed (excluded): {name}: {failure}")
    return lines


def main(argv=None) -> int:
    p = common.OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--nproc", type=int, default=4)
    p.add_argument("--variants", action="store_true", help="also measure with the endpoint off")
    p.add_argument("--json", metavar="PATH", help="write raw samples and summaries here")
    args = p.parse_args(argv)
    if args.reps < 1 or args.nproc < 1:
        p.error("--reps and --nproc must be at least 1")

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        result = measure(args.reps, args.nproc, args.variants, progress=say)
    except common.RunFailed as e:
        say(f"launch_overhead: {e}")
        return 1
    print("\n".join(report(result)))
    if args.json:
        result["machine"] = common.machine_info()
        result["load_average_end"] = common.load_average()
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if any(result["failures"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
