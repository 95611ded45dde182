"""A DDP job over gloo in which one rank's forward does more work for a while: a straggler.

    ddp_straggler.py [--slow-rank R] [--factor F] [--slow-steps S] [--steps N] [--width W]

Every rank trains the same small MLP on its own random batch; rank R's forward runs the MLP F
times (F times the work; the extra passes without gradients) during the first S steps, then once like every other rank. No call of
Elastiscope's: the agent sees the forward times through its zero-code DDP timing. The last line
on stdout is ``done: <steps> steps, slow until step <S> on rank <R>``.
"""
import argparse
import gc

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


class Tower(torch.nn.Module):
    """An MLP whose forward can do its work several times (``repeats``): the extra passes run
    without gradients, so only the forward is slower (the backward stays the same)."""

    def __init__(self, width: int, depth: int = 4) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))
        self.repeats = 1

    def _pass(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x

    def forward(self, x):
        with torch.no_grad():
            for _ in range(self.repeats - 1):
                self._pass(x)
        return self._pass(x)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--slow-rank", type=int, default=2)
    p.add_argument("--factor", type=int, default=3)
    p.add_argument("--slow-steps", type=int, default=40)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(1)  # four workers share two cores: one thread each
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    tower = Tower(args.width)
    model = DistributedDataParallel(tower)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(rank)
    for step in range(args.steps):
        slow = rank == args.slow_rank and step < args.slow_steps
        tower.repeats = args.factor if slow else 1
        batch = torch.randn(args.batch, args.width, generator=generator)
        optimizer.zero_grad()
        model(batch).square().mean().backward()
        optimizer.step()
    # DDP goes before the process group: see examples/train_ddp.py (a torch 2.13 hang at exit).
    del model
    gc.collect()
    dist.destroy_process_group()
    if rank == 0:
        print(f"done: {args.steps} steps, slow until step {args.slow_steps} on rank {args.slow_rank}",
              flush=True)


if __name__ == "__main__":
    main()
