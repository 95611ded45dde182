"""A small, real DDP training job on CPU over gloo: an MLP learning a synthetic classification task.

Runs the same under ``torchrun`` and ``elastiscope run``; it reads only the standard torchelastic
environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT, TORCHELASTIC_RESTART_COUNT, TORCHELASTIC_RUN_ID)::

    elastiscope run --nproc-per-node 2 examples/train_ddp.py
    torchrun --nproc-per-node 2 examples/train_ddp.py

Rank 0 checkpoints to ``--checkpoint-dir`` every ``--checkpoint-every`` steps, in one file per run
id, and every rank resumes from it when the group restarts. To see a restart, crash one rank
once: ``--crash-once-rank 1`` raises on rank 1 at step 50 (or ``--crash-at-step N``) of the first
attempt only (TORCHELASTIC_RESTART_COUNT == 0), so the restarted group resumes and finishes.
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

FEATURES, CLASSES = 32, 4
# Where --crash-once-rank strikes unless --crash-at-step says otherwise: after a checkpoint (step
# 40), so the restarted group visibly resumes rather than starting over.
DEFAULT_CRASH_STEP = 50


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="optimizer steps in total")
    p.add_argument("--batch-size", type=int, default=64, help="per worker")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--samples", type=int, default=8192, help="size of the synthetic data set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-dir", default=os.path.join("runs", "checkpoints"),
                   help="where rank 0 saves and every rank resumes from; '' disables it")
    p.add_argument("--checkpoint-every", type=int, default=20)
    p.add_argument("--crash-once-rank", type=int, default=None,
                   help="global rank that raises once, on the first attempt only")
    p.add_argument("--crash-at-step", type=int, default=None,
                   help=f"the step --crash-once-rank raises at (default {DEFAULT_CRASH_STEP}, "
                   "or the last step of a shorter run)")
    p.add_argument("--step-delay", type=float, default=0.0,
                   help="seconds to sleep per step, to make a run last long enough to watch")
    args = p.parse_args(argv)
    if args.crash_once_rank is not None and args.crash_at_step is None:
        args.crash_at_step = min(DEFAULT_CRASH_STEP, args.steps)
    return args


def synthetic_data(samples, seed):
    """Points labelled by a fixed random teacher network: learnable, and the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, FEATURES, generator=g)
    teacher = torch.randn(FEATURES, CLASSES, generator=g)
    y = (x @ teacher + 0.1 * torch.randn(samples, CLASSES, generator=g)).argmax(dim=1)
    return x, y


def make_model(hidden):
    return nn.Sequential(
        nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, CLASSES),
    )


def checkpoint_path(directory):
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "local")
    return os.path.join(directory, f"train_ddp-{run_id}.pt")


def save_checkpoint(path, model, optimizer, step):
    # Write-then-rename: a crash mid-save leaves the previous checkpoint intact.
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, model, optimizer):
    """The step to resume from (0 without a checkpoint)."""
    if not path or not os.path.exists(path):
        return 0
    state = torch.load(path, map_location="cpu")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def should_crash(args, rank, step):
    return (
        args.crash_once_rank == rank
        and args.crash_at_step == step
        and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0
    )


@record
def main(argv=None):
    args = parse_args(argv)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)

    x, y = synthetic_data(args.samples, args.seed)
    shard = torch.arange(rank, args.samples, world)  # each rank trains on its own slice

    model = make_model(args.hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    ckpt = checkpoint_path(args.checkpoint_dir) if args.checkpoint_dir else None
    start = load_checkpoint(ckpt, model, optimizer)
    ddp = DistributedDataParallel(model)  # after loading: DDP broadcasts rank 0's weights anyway
    loss_fn = nn.CrossEntropyLoss()
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if rank == 0:
        print(f"train_ddp: world size {world}, restart {restart}, "
              f"{'resuming at step ' + str(start) if start else 'starting fresh'}", flush=True)

    started = time.monotonic()
    loss = torch.tensor(float("nan"))
    for step in range(start + 1, args.steps + 1):
        if should_crash(args, rank, step):
            raise RuntimeError(f"injected crash on rank {rank} at step {step}")
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step * 131 + rank)
        idx = shard[torch.randint(len(shard), (args.batch_size,), generator=g)]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(ddp(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        if args.step_delay:
            time.sleep(args.step_delay)
        if rank == 0 and (step % args.log_every == 0 or step == args.steps):
            print(f"train_ddp: step {step}/{args.steps} loss {loss.item():.4f}", flush=True)
        if ckpt and rank == 0 and step % args.checkpoint_every == 0:
            save_checkpoint(ckpt, model, optimizer, step)

    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    if ckpt and rank == 0:
        save_checkpoint(ckpt, model, optimizer, args.steps)
    # Drop DDP before the process group (torch 2.13): a Reducer that outlives the group destroys
    # it from a destructor that holds the GIL while joining gloo's threads, and a thread still
    # freeing the last backward's work needs the GIL: a hang at exit, about one run in ten
    # (docs/operations.md, "A hang at exit in torch 2.13"). gc: DDP's hooks form cycles.
    del ddp
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        print(f"train_ddp: done: {args.steps} steps, loss {loss.item():.4f}, "
              f"accuracy {accuracy:.3f}, {time.monotonic() - started:.1f}s", flush=True)


if __name__ == "__main__":
    main()
