"""Any bench script's figures for this tree against an older commit's, taken alternately in one run.

    python bench/against_commit.py SCRIPT [--baseline 77e3e9c] [--new COMMIT] [--reps 3] [--key PATTERN ...] [-- SCRIPT ARGS]

    python bench/against_commit.py telemetry_hotpath.py --reps 5 --key 'cases.*.p99_us' -- --n 50000
    python bench/against_commit.py restart_latency.py --reps 3 --key 'median_ms.*' --key 'ratios.*' -- --repetitions 5

Why: "unchanged within noise" (issue 12) is a claim about two trees on the same machine at the same
time. A figure taken today for this tree and one written down months ago for the old commit differ
by the machine's drift as much as by the code. Here the baseline commit (and ``--new``, if given
instead of this working tree) is checked out into a temporary git worktree
(``common.checked_out``), and ``bench/SCRIPT --json`` runs in each tree in turn (each repetition
starts with the other tree), its own copy of the script against its own code (``PYTHONPATH`` and
the working directory are the tree). Both copies must print one JSON object with ``--json``.

Figures: every numeric value of the JSON whose dotted path matches a ``--key`` pattern (fnmatch;
default: all of them), median (min-max) over the repetitions for each tree, and new/old of the
medians. ``agent_cpu_paired.py`` does the same for the agent's CPU with both agents running at once.
"""

from __future__ import annotations

import fnmatch
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from common import CheckoutFailed, OneLineParser, checked_out  # noqa: E402


def numeric_leaves(value, prefix: str = "") -> dict[str, float]:
    """{dotted path: number} of a JSON value; lists are samples, not figures, and are left out."""
    if isinstance(value, bool):
        return {}
    if isinstance(value, (int, float)):
        return {prefix: float(value)}
    if isinstance(value, dict):
        found: dict[str, float] = {}
        for key, inner in value.items():
            found.update(numeric_leaves(inner, f"{prefix}.{key}" if prefix else str(key)))
        return found
    return {}


def run_script(tree: Path, script: str, script_args: list[str], timeout: float) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, str(tree / "bench" / script), "--json", *script_args],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{script} in {tree.name} exited {done.returncode}: {last}")
    text = done.stdout
    try:
        return numeric_leaves(json.loads(text[text.index("{"):]))
    except ValueError as e:
        raise RuntimeError(f"{script} in {tree.name} printed no JSON object: {e}") from None


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", help="a script in bench/ that prints one JSON object with --json")
    parser.add_argument("--baseline", default="77e3e9c", help="the older commit (default 77e3e9c)")
    parser.add_argument("--new", help="a commit to take as the new side (default: this working tree)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--key", action="append", default=[], help="fnmatch pattern of dotted paths to show")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per script run")
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" is the script's own; argparse would take it for ours.
    script_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if not (BENCH / args.script).is_file():
        parser.error(f"no bench/{args.script} in this tree")
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    patterns = args.key or ["*"]

    commits = {"old": args.baseline, **({"new": args.new} if args.new else {})}
    runs: dict[str, list[dict[str, float]]] = {"new": [], "old": []}
    with tempfile.TemporaryDirectory(prefix="against-commit-") as tmp:
        try:
            with checked_out(commits, Path(tmp)) as worktrees:
                trees = {"new": REPO, **worktrees}
                for rep in range(args.reps):
                    for name in (("new", "old") if rep % 2 == 0 else ("old", "new")):
                        runs[name].append(run_script(trees[name], args.script, script_args, args.timeout))
        except CheckoutFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1

    keys = [key for key in runs["new"][0] if any(fnmatch.fnmatchcase(key, p) for p in patterns)]
    keys = [key for key in keys if all(key in run for name in runs for run in runs[name])]
    if not keys:
        print(f"error: no numeric figure matches {patterns} in both trees' output", file=sys.stderr)
        return 1
    print(f"{args.script}, {args.reps} alternating runs each, new = {args.new or 'this working tree'}, "
          f"old = {args.baseline}, "
          f"load {os.getloadavg()[0]:.1f}:")
    width = max(len(key) for key in keys)
    for key in keys:
        new = [run[key] for run in runs["new"]]
        old = [run[key] for run in runs["old"]]
        ratio = statistics.median(new) / statistics.median(old) if statistics.median(old) else float("nan")
        print(f"  {key:{width}s}  new {summary(new)}  old {summary(old)}  new/old {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
