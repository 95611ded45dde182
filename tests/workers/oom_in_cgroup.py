"""Rank 0 moves itself into the memory cgroup whose task file is CGROUP_TASKS, then allocates
until the OOM killer ends it; other ranks wait to be stopped.

    oom_in_cgroup.py CGROUP_TASKS
"""
import os
import sys
import time

if os.environ["RANK"] == "0":
    with open(sys.argv[1], "w") as f:
        f.write(str(os.getpid()))
    hoard = []
    while True:
        hoard.append(bytearray(16 << 20))  # touched: bytearray zero-fills
time.sleep(60)
