"""Rank 0 ignores SIGTERM; rank 1 fails once rank 0 is ready, so the agent must stop rank 0.

    ignore_sigterm.py --ready DIR

The agent's SIGTERM does nothing to rank 0: only the SIGKILL after the shutdown grace period
ends it. Rank 0 writes ``DIR/ignoring`` (its pid) once the signal is ignored.
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ready", required=True)
    args = p.parse_args()
    ready = Path(args.ready)
    ready.mkdir(parents=True, exist_ok=True)
    flag = ready / "ignoring"
    if os.environ["RANK"] == "0":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        flag.write_text(str(os.getpid()))
        while True:
            time.sleep(1)
    deadline = time.monotonic() + 30
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return 3


if __name__ == "__main__":
    sys.exit(main())
