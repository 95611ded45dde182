"""The same kind of job as train_ddp.py, reporting its progress to Elastiscope explicitly.

``train_ddp.py`` needs no call of ours: under ``elastiscope run`` every ``optimizer.step()`` is
counted. This example shows what a script can add (or use when its loop has no torch optimizer):
its own global step on resume, checkpoints, and a few named values per rank::

    elastiscope run --nproc-per-node 2 examples/train_explicit.py

``from elastiscope import progress`` imports neither torch nor the agent, and every call is a
no-op when the script runs without an agent (``python examples/train_explicit.py`` under
torchrun, say).
"""

import argparse
import gc
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel

from elastiscope import progress

FEATURES, CLASSES = 32, 4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--checkpoint-dir", default=os.path.join("runs", "checkpoints"))
    p.add_argument("--checkpoint-every", type=int, default=20)
    p.add_argument("--crash-once-rank", type=int, default=None)
    p.add_argument("--crash-at-step", type=int, default=None)
    p.add_argument("--step-delay", type=float, default=0.0)
    return p.parse_args(argv)


def checkpoint_path(directory):
    return os.path.join(directory, f"train_explicit-{os.environ.get('TORCHELASTIC_RUN_ID', 'local')}.pt")


@record
def main(argv=None):
    args = parse_args(argv)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    x = torch.randn(4096, FEATURES)
    y = (x @ torch.randn(FEATURES, CLASSES)).argmax(dim=1)
    model = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    ckpt = checkpoint_path(args.checkpoint_dir) if args.checkpoint_dir else None
    start = 0
    if ckpt and os.path.exists(ckpt):
        state = torch.load(ckpt, map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        progress.checkpoint_loaded(start)  # the global step is `start` now
    ddp = DistributedDataParallel(model)
    loss_fn = nn.CrossEntropyLoss()
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    for step in range(start + 1, args.steps + 1):
        if args.crash_once_rank == rank and args.crash_at_step == step and restart == 0:
            raise RuntimeError(f"injected crash on rank {rank} at step {step}")
        began = time.perf_counter()
        idx = torch.randint(len(x), (args.batch_size,))
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(ddp(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        if args.step_delay:
            time.sleep(args.step_delay)
        progress.step(global_step=step)  # from now on only these calls count steps
        progress.scalar("loss", loss.item())
        progress.scalar("samples_per_second", args.batch_size / (time.perf_counter() - began))
        if ckpt and rank == 0 and step % args.checkpoint_every == 0:
            os.makedirs(args.checkpoint_dir, exist_ok=True)
            tmp = f"{ckpt}.tmp{os.getpid()}"
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
            os.replace(tmp, ckpt)
            progress.checkpoint_saved(step)

    # Drop DDP before the process group (torch 2.13): a Reducer that outlives the group destroys
    # it from a destructor that holds the GIL while joining gloo's threads, and a thread still
    # freeing the last backward's work needs the GIL: a hang at exit, about one run in ten
    # (docs/operations.md, "A hang at exit in torch 2.13"). gc: DDP's hooks form cycles.
    del ddp
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        print(f"train_explicit: done: {args.steps} steps, world size {world}", flush=True)


if __name__ == "__main__":
    main()
