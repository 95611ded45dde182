"""A DDP-style job over gloo that hangs: rank 1 sleeps forever in user code at step
``HANG_AT_STEP`` of the first attempt, so rank 0 waits in an all-reduce for it.

Rank 0 checkpoints every step into ``CHECKPOINT_DIR`` (when set) and every rank resumes from
it, so a restarted group finishes. ``STEPS`` steps in all, ``STEP_DELAY`` seconds each.
``IGNORE_SIGTERM=1``: the sleeping rank ignores SIGTERM too (only SIGKILL ends it).
"""

import os
import signal
import time

import torch
import torch.distributed as dist

STEPS = int(os.environ.get("STEPS", "12"))
HANG_AT_STEP = int(os.environ.get("HANG_AT_STEP", "5"))
STEP_DELAY = float(os.environ.get("STEP_DELAY", "0.05"))
CHECKPOINT_DIR = os.environ.get("CHECKPOINT_DIR", "")


def sleep_forever():
    while True:
        time.sleep(3600)  # the hang: this line is what the stalled event names


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    path = os.path.join(CHECKPOINT_DIR, "hang.pt") if CHECKPOINT_DIR else ""
    start = 0
    if path and os.path.exists(path):
        state = torch.load(path)
        model.load_state_dict(state["model"])
        start = state["step"] + 1
        print(f"rank {rank} resumed at step {start}", flush=True)
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    for step in range(start, STEPS):
        if rank == 1 and step == HANG_AT_STEP and first_attempt:
            if os.environ.get("IGNORE_SIGTERM") == "1":
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            sleep_forever()
        model(torch.randn(8, 4)).sum().backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)  # rank 0 waits here for the sleeping rank 1
        optimizer.step()
        optimizer.zero_grad()
        if rank == 0 and path:
            tmp = f"{path}.tmp"
            torch.save({"model": model.state_dict(), "step": step}, tmp)
            os.replace(tmp, path)
        dist.barrier()  # the checkpoint is on disk before anyone starts the next step
        time.sleep(STEP_DELAY)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
