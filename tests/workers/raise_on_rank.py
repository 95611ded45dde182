"""DDP-style job over gloo: every rank all-reduces in a loop; global rank RAISE_RANK raises
after a few steps, so its peers die of connection errors right after it.

    raise_on_rank.py RAISE_RANK
"""
import os
import sys
import time

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
raise_rank = int(sys.argv[1])
value = torch.ones(1)
deadline = time.monotonic() + 120  # never outlive a broken test by much
step = 0
while time.monotonic() < deadline:
    if rank == raise_rank and step == 5:
        raise ValueError(f"rank {rank}: the batch at step {step} is corrupt")
    dist.all_reduce(value)
    step += 1
    time.sleep(0.01)
print(f"rank {rank} ran out of time", file=sys.stderr)
sys.exit(1)
