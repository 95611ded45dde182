"""Import cost of ``agent.api`` next to torch's ``agent.server.api``: wall time and peak RSS.

Each import runs in a fresh interpreter; the two alternate (A/B) so drift hits both alike.
Peak RSS is the child's own ru_maxrss from wait4, not a sample.

    python bench/import_cost.py [--reps 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = {
    "elastiscope": "import agent.api",
    "torch": "import torch.distributed.elastic.agent.server.api",
}


def measure(code: str) -> tuple[float, int]:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{code!r} exited {proc.returncode}")
    return wall, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    for code in CASES.values():  # warm the page cache for both before timing
        measure(code)
    samples: dict[str, list[tuple[float, int]]] = {k: [] for k in CASES}
    for _ in range(args.reps):
        for name, code in CASES.items():
            samples[name].append(measure(code))

    summary = {}
    for name, runs in samples.items():
        walls = [w for w, _ in runs]
        rss = [r for _, r in runs]
        summary[name] = {
            "wall_s_median": statistics.median(walls),
            "wall_s_min": min(walls),
            "wall_s_max": max(walls),
            "rss_mib_median": statistics.median(rss) / 2**20,
        }
    ours, theirs = summary["elastiscope"], summary["torch"]
    summary["ratio"] = {
        "wall": ours["wall_s_median"] / theirs["wall_s_median"],
        "rss": ours["rss_mib_median"] / theirs["rss_mib_median"],
    }
    summary["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"import cost, {args.reps} alternating runs each, {os.cpu_count()} CPUs")
    for name in CASES:
        s = summary[name]
        print(f"  {name:12s} wall median {s['wall_s_median']*1000:7.1f} ms "
              f"(min {s['wall_s_min']*1000:.1f}, max {s['wall_s_max']*1000:.1f})  "
              f"peak RSS median {s['rss_mib_median']:.1f} MiB")
    print(f"  ratio ours/torch: wall {summary['ratio']['wall']:.3f}, RSS {summary['ratio']['rss']:.3f}")


if __name__ == "__main__":
    main()
