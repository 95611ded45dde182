"""A worker that prints N MB to stdout as fast as it can, then exits 0.

    chatty.py --megabytes 100

Each line is numbered, so a test can check that the last line made it through.
"""

import argparse
import sys

LINE = 100  # bytes per line, newline included


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--megabytes", type=int, default=100)
    args = p.parse_args()
    lines = args.megabytes * 1024 * 1024 // LINE
    out = sys.stdout
    filler = "y" * (LINE - 12)
    chunk = []
    for i in range(lines):
        chunk.append(f"{i:010d} {filler}\n")
        if len(chunk) == 1000:
            out.write("".join(chunk))
            chunk = []
    out.write("".join(chunk))
    out.write(f"chatty: done {lines} lines\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
