"""What keeping the workers' stderr tail costs them: a healthy ``examples/train_ddp.py`` run's
step rate, and a worker that floods stderr, with the stderr relay (workers sharing the agent's
console write to a named pipe that one agent thread copies to the console, keeping the tail)
and without it (workers write to the console directly, as before). Alternating A/B runs.

    python bench/stderr_relay.py [--reps 5] [--steps 1500] [--nproc 2] [--flood-lines 200000]

"without" runs the same agent with the relay's constructor failing, which is the agent's own
fallback (the workers then share the console directly). The console is a file here, as it is
under a job scheduler. Goal: the step rate unchanged within noise.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAIN_DDP = REPO / "examples" / "train_ddp.py"
FLOOD = (
    "import os, sys, time\n"
    "t = time.perf_counter()\n"
    "for i in range(int(sys.argv[1])): sys.stderr.write(f'line {i} of the flood\\n')\n"
    "sys.stderr.flush()\n"
    "print(f'flood: {time.perf_counter() - t:.4f}s', flush=True)\n"
)
# Runs the agent's CLI, with the relay switched off when asked (the agent's own fallback path).
LAUNCH = (
    "import sys\n"
    "if sys.argv.pop(1) == 'without':\n"
    "    import agent.worker_failures as wf\n"
    "    def no_relay(*args, **kwargs): raise OSError('relay off for the benchmark')\n"
    "    wf.StderrRelay = no_relay\n"
    "from agent.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
_DONE = re.compile(r"train_ddp: done: (\d+) steps, .*?, ([\d.]+)s")
_FLOOD = re.compile(r"flood: ([\d.]+)s")


def run(variant: str, script_args: list[str], nproc: int, tmp: Path) -> str:
    console = tmp / f"console.{variant}.txt"
    cmd = [sys.executable, "-c", LAUNCH, variant, "run", "--standalone", "--nproc-per-node", str(nproc),
           "--max-restarts", "0", "--metrics-port", "off", "--event-log", "off",
           *script_args]
    with open(console, "wb") as out:
        proc = subprocess.run(cmd, cwd=tmp, stdout=out, stderr=out, timeout=600,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    text = console.read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{variant} run failed ({proc.returncode}):\n{text[-2000:]}")
    return text


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--flood-lines", type=int, default=200_000)
    args = p.parse_args()
    rates: dict[str, list[float]] = {"with": [], "without": []}
    floods: dict[str, list[float]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory(prefix="stderr_relay_") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "flood.py").write_text(FLOOD)
        train = [str(TRAIN_DDP), "--steps", str(args.steps), "--log-every", str(args.steps),
                 "--checkpoint-dir", ""]
        for rep in range(args.reps):
            order = ("with", "without") if rep % 2 == 0 else ("without", "with")
            for variant in order:
                steps, seconds = _DONE.search(run(variant, train, args.nproc, tmp)).groups()
                rates[variant].append(int(steps) / float(seconds))
                text = run(variant, [str(tmp / "flood.py"), str(args.flood_lines)], args.nproc, tmp)
                floods[variant].append(max(float(s) for s in _FLOOD.findall(text)))
            print(f"rep {rep}: steps/s with {rates['with'][-1]:.1f} without {rates['without'][-1]:.1f}; "
                  f"flood s with {floods['with'][-1]:.3f} without {floods['without'][-1]:.3f}", flush=True)
    for name, data, unit in (("train_ddp steps/s", rates, ""), (f"{args.flood_lines} stderr lines", floods, " s")):
        for variant in ("with", "without"):
            values = data[variant]
            print(f"{name} {variant:>7} relay: median {statistics.median(values):.3f}{unit} "
                  f"(min {min(values):.3f}, max {max(values):.3f}, n={len(values)})")


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"({time.monotonic() - started:.0f} s)")
