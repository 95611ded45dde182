"""Launch overhead: ``elastiscope run`` against ``torchrun`` on a no-op script with 4 workers.

    python bench/launch_overhead.py [--reps 7] [--nproc 4] [--json results.json]

Both launchers run the same no-op script with their defaults (one node: an embedded c10d store),
alternating which goes first in each repetition, after one discarded warm-up each. Measured
from the outside, the same way for both:

* wall time: process start to exit;
* peak tree RSS: the largest sum of resident memory over the launcher and all its descendants,
  sampled with psutil every few milliseconds (children forked but not yet exec'd are skipped:
  their pages are the launcher's);
* launcher peak RSS: ``ru_maxrss`` from ``wait4`` (the largest single process of the tree,
  which is the launcher itself: it imports torch, the no-op workers do not).

``elastiscope run`` keeps its endpoint on (port 0) and writes its event log, as for a user; the
one default changed is ``--metrics-linger 0`` (the end-of-job grace for a last scrape, 5 s by
default, which would otherwise be measured as launch overhead). ``--variants`` adds runs with
the endpoint off, to show what it costs.

Goal: elastiscope wall <= 1.0x and peak tree RSS <= 1.1x torchrun's (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def launchers(workdir: Path, nproc: int, variants: bool) -> dict[str, list[str]]:
    common = ["--nproc-per-node", str(nproc)]
    ours = [sys.executable, "-m", "agent", "run", *common, "--metrics-linger", "0",
            "--event-log", str(workdir / "runs")]
    out = {
        "torchrun": [sys.executable, "-m", "torch.distributed.run", *common],
        "elastiscope": ours,
    }
    if variants:
        out["elastiscope (endpoint off)"] = [*ours, "--metrics-port", "off"]
    return out


class TreeSampler:
    """Peak of the summed RSS of a process and its descendants, sampled on a thread.

    A child that still has its parent's command line has been forked but has not exec'd yet:
    its resident pages are its parent's (vfork shares them outright), and counting them again
    would add a phantom copy of the launcher, more often for a launcher that forks workers
    from its own big process (torchrun) than for one that forks them from a small helper.
    Such children are left out of the sum.
    """

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.peak = 0
        self._pid = pid
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _sample(root: psutil.Process) -> int:
        cmdlines: dict[int, list[str]] = {}
        total = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                with p.oneshot():
                    cmdline = cmdlines[p.pid] = p.cmdline()
                    parent_cmdline = cmdlines.get(p.ppid())
                    if parent_cmdline is not None and cmdline == parent_cmdline:
                        continue  # forked, not yet exec'd
                    total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        try:
            root = psutil.Process(self._pid)
        except psutil.Error:
            return
        while not self._done.is_set():
            try:
                self.peak = max(self.peak, self._sample(root))
            except psutil.Error:
                break
            self._done.wait(self._interval)

    def stop(self) -> int:
        self._done.set()
        self._thread.join(5)
        return self.peak


class RunFailed(Exception):
    pass


def run_once(argv: list[str], script: Path, cwd: Path, env: dict[str, str],
             timeout: float) -> dict[str, float]:
    started = time.perf_counter()
    proc = subprocess.Popen([*argv, str(script)], cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sampler = TreeSampler(proc.pid)
    # A launcher that hangs is killed (with its whole session) and reported, not waited for.
    watchdog = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    wall = time.perf_counter() - started
    tree_peak = sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        what = "hung and was killed" if wall >= timeout else f"exited {proc.returncode}"
        raise RunFailed(f"{' '.join(argv[2:4])} {what} after {wall:.1f}s")
    return {"wall_s": wall, "tree_rss_mib": tree_peak / 2**20, "launcher_rss_mib": usage.ru_maxrss / 1024}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--nproc", type=int, default=4)
    p.add_argument("--variants", action="store_true", help="also measure with the endpoint off")
    p.add_argument("--json", metavar="PATH", help="write raw samples and summaries here")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a run is killed")
    args = p.parse_args(argv)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for key in list(env):  # the caller's launcher settings must not leak into either side
        if key.startswith(("PET_", "ELASTISCOPE_", "TORCHELASTIC_")):
            del env[key]

    with tempfile.TemporaryDirectory(prefix="launch-overhead-") as tmp:
        workdir = Path(tmp)
        script = workdir / "noop.py"
        script.write_text("pass\n")
        commands = launchers(workdir, args.nproc, args.variants)
        names = list(commands)
        failures: list[str] = []

        def measure(name: str) -> dict[str, float] | None:
            try:
                return run_once(commands[name], script, workdir, env, args.timeout)
            except RunFailed as e:
                failures.append(f"{name}: {e}")
                print(f"FAILED {name}: {e}", file=sys.stderr)
                return None

        for name in names:  # warm-up: page cache, .pyc files
            measure(name)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for rep in range(args.reps):
            order = names if rep % 2 == 0 else list(reversed(names))
            for name in order:
                sample = measure(name)
                if sample is None:
                    continue
                samples[name].append(sample)
                print(f"rep {rep} {name:28s} " + "  ".join(
                    f"{k}={v:.3f}" for k, v in sample.items()), file=sys.stderr)

    result = {"nproc": args.nproc, "reps": args.reps, "cpus": os.cpu_count(),
              "load_average_end": os.getloadavg(), "failures": failures, "launchers": {}}
    for name in names:
        result["launchers"][name] = {
            metric: summary([s[metric] for s in samples[name]])
            for metric in ("wall_s", "tree_rss_mib", "launcher_rss_mib")
        } | {"samples": samples[name]}

    base = result["launchers"]["torchrun"]
    print(f"\nno-op script, {args.nproc} workers, {args.reps} alternating reps, medians (min-max):")
    print(f"{'launcher':28s} {'wall s':>18s} {'tree RSS MiB':>20s} {'launcher RSS MiB':>20s}")
    for name in names:
        row = result["launchers"][name]
        cells = []
        for metric in ("wall_s", "tree_rss_mib", "launcher_rss_mib"):
            s = row[metric]
            cells.append(f"{s['median']:7.2f} ({s['min']:.2f}-{s['max']:.2f})")
        print(f"{name:28s} {cells[0]:>18s} {cells[1]:>20s} {cells[2]:>20s}")
    print()
    for name in names[1:]:
        row = result["launchers"][name]
        ratios = {m: row[m]["median"] / base[m]["median"] for m in ("wall_s", "tree_rss_mib", "launcher_rss_mib")}
        result["launchers"][name]["ratio_to_torchrun"] = ratios
        verdict = "meets" if ratios["wall_s"] <= 1.0 and ratios["tree_rss_mib"] <= 1.1 else "misses"
        print(f"{name}: wall {ratios['wall_s']:.2f}x, tree RSS {ratios['tree_rss_mib']:.2f}x, "
              f"launcher RSS {ratios['launcher_rss_mib']:.2f}x torchrun -> {verdict} the goal "
              "(wall <= 1.0x, RSS <= 1.1x)")
    for failure in failures:
        print(f"run failed (excluded): {failure}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
