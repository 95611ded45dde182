"""A worker that writes a broken or enormous error file, then exits 1.

    bad_error_file.py --kind garbage|huge|empty [--megabytes N]

garbage: bytes that are not JSON; empty: a zero-length file; huge: valid torch error JSON whose
message is N MB. The agent must still report the failure (exit code, rank) without choking.
"""

import argparse
import json
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kind", required=True, choices=["garbage", "huge", "empty"])
    p.add_argument("--megabytes", type=int, default=20)
    args = p.parse_args()
    path = os.environ["TORCHELASTIC_ERROR_FILE"]
    if args.kind == "garbage":
        data = b"\x00\xff{not json at all" + os.urandom(4096)
    elif args.kind == "empty":
        data = b""
    else:
        message = "x" * (args.megabytes * 1024 * 1024)
        data = json.dumps({"message": {"message": f"huge: {message}", "extraInfo": {
            "py_callstack": "", "timestamp": str(int(time.time()))}}}).encode()
    with open(path, "wb") as f:
        f.write(data)
    return 1


if __name__ == "__main__":
    sys.exit(main())
