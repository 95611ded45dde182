"""What ``elastiscope`` tells the person running it, apart from errors: status lines on stderr.

stdout belongs to the workers (their output is passed through), so our own lines go to stderr,
each prefixed with the program name so they stand out among the workers' lines.
"""

from __future__ import annotations

import sys

__all__ = ["PROG", "say"]

PROG = "elastiscope"


def say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
