"""A worker that dies in a chosen way, then (on later attempts) does its work and exits 0.

    die_once.py --how segv|sigkill|exit137 --rank R --out DIR [--steps N] [--attempts K]

Global rank R dies on attempts 0..K-1 (TORCHELASTIC_RESTART_COUNT) once every rank has
started, so the agent sees one failure among running peers. Every rank that finishes writes
``DIR/rank<R>.done`` holding the steps it completed: the test's proof that the job's work was
done in full after the restart. No torch import: a fault case costs the agent, not the worker.
"""

import argparse
import ctypes
import os
import signal
import sys
import time
from pathlib import Path


def die(how: str) -> None:
    sys.stdout.flush()
    if how == "segv":
        ctypes.string_at(0)  # a real invalid read, not a SIGSEGV sent by kill
    elif how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit137":
        os._exit(137)
    raise SystemExit(f"unknown --how {how!r}")


def wait_for_peers(out: Path, attempt: int, world: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(list(out.glob(f"started.{attempt}.*"))) < world and time.monotonic() < deadline:
        time.sleep(0.02)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--how", required=True)
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--attempts", type=int, default=1)
    args = p.parse_args()

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"started.{attempt}.{rank}").write_text(str(os.getpid()))
    if attempt < args.attempts:
        wait_for_peers(out, attempt, world)
        if rank == args.rank:
            die(args.how)
        time.sleep(60)  # a healthy peer: stopped by the agent when the other rank dies
        return 0
    for _ in range(args.steps):
        time.sleep(0.01)
    (out / f"rank{rank}.done").write_text(str(args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
