"""A worker that sleeps, records what happened to it, and exits 0 when its time is up.

    sleeper.py --out DIR --seconds S [--per-group-rank K]

Sleeps S + K * GROUP_RANK seconds (nodes finish at different times with K > 0);
SLEEPER_SECONDS in the environment overrides S, so one node of a job can differ. Writes
``DIR/<rank>.started`` (pid) at start, ``DIR/<rank>.sigterm`` if SIGTERM arrives (then exits
143), ``DIR/<rank>.done`` when it finishes on its own.
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--per-group-rank", type=float, default=0)
    args = p.parse_args()
    seconds = float(os.environ.get("SLEEPER_SECONDS", args.seconds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank = os.environ["RANK"]

    def on_term(signum, frame):
        (out / f"{rank}.sigterm").write_text(str(os.getpid()))
        os._exit(143)

    signal.signal(signal.SIGTERM, on_term)
    (out / f"{rank}.started").write_text(str(os.getpid()))
    time.sleep(seconds + args.per_group_rank * int(os.environ.get("GROUP_RANK", "0")))
    (out / f"{rank}.done").write_text(str(os.getpid()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
