"""Rank 0 exits 1 after a short sleep on the first attempt; every other run exits 0.

    fail_once.py [SECONDS]
"""
import os
import sys
import time

if os.environ["RANK"] == "0" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0.5)
    sys.exit(1)
