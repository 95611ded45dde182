"""Rank 0 ends with the given exit status (or signal, as 'SIGKILL'); other ranks exit 0.

    exit_code.py STATUS
"""
import os
import signal
import sys

status = sys.argv[1]
if os.environ["RANK"] == "0":
    if status.startswith("SIG"):
        os.kill(os.getpid(), getattr(signal, status))
    sys.exit(int(status))
