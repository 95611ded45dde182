"""Rank 1 writes a reason to stderr, then exits 3 without an error file; other ranks wait for
the agent to stop them.

    bad_config.py
"""
import os
import sys
import time

rank = int(os.environ["RANK"])
if rank == 1:
    print("loading config ...", file=sys.stderr)
    print(f"rank {rank}: bad config, exiting 3", file=sys.stderr)
    sys.exit(3)
time.sleep(60)
