"""How often torch 2.13's gloo teardown hangs at the end of a DDP script, and the examples' way out.

    python bench/torch_exit_hang.py [--trials 40] [--runs 3] [--variants as_usual,ddp_first]

Two processes (spawned, no agent, no code of ours) repeat a DDP training over gloo: a few steps,
then the usual ending, ``dist.barrier()`` and ``dist.destroy_process_group()``, and return, which
drops the DDP module. ``as_usual`` ends that way. ``ddp_first`` drops the DDP module (and
collects its reference cycles) before the barrier, as ``examples/train_ddp.py`` does.

Why it hangs (py-spy, native frames, of a hung worker): the Reducer, freed when DDP goes, holds
the last reference to the process group and destroys it from a destructor that keeps the GIL
while it joins gloo's threads; one of those threads is still freeing the barrier's work, which
holds the last backward's all-reduce works, whose thread-local state holds a Python object
(the context torch stashes during backward): freeing it needs the GIL. Dropped first, the
Reducer leaves the group to ``destroy_process_group``, whose release of the group lets go of
the GIL before joining.

A run is hung when neither process finishes a trial for 30 s; its processes are killed and the
run counts the trials done. Output: per variant, hangs and trials.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time

STALL_S = 30.0


def trial(rank: int, port: int, ddp_first: bool) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(5):
        optimizer.zero_grad(set_to_none=True)
        ddp(torch.randn(16, 32)).sum().backward()
        optimizer.step()
    if ddp_first:
        del ddp
        gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def worker(rank: int, base_port: int, trials: int, ddp_first: bool, done_file: str) -> None:
    import torch

    torch.set_num_threads(1)
    for i in range(trials):
        trial(rank, base_port + i, ddp_first)
        with open(f"{done_file}.{rank}", "w") as f:
            f.write(str(i + 1))


def one_run(variant: str, trials: int, done_file: str, base_port: int) -> int:
    """Trials both processes finished; negative (minus the trial it hung in) when it hung."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    processes = [context.Process(target=worker, args=(r, base_port, trials, variant == "ddp_first", done_file))
                 for r in range(2)]
    for process in processes:
        process.start()

    def done() -> int:
        counts = []
        for rank in range(2):
            try:
                with open(f"{done_file}.{rank}") as f:
                    counts.append(int(f.read() or 0))
            except (OSError, ValueError):
                counts.append(0)
        return min(counts)

    last_change, seen = time.monotonic(), -1
    while any(p.is_alive() for p in processes):
        time.sleep(0.5)
        now = done()
        if now != seen:
            seen, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            for process in processes:
                process.kill()
            return -(now + 1)  # hung in trial now + 1
    return done()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40, help="trials per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (a run ends at its first hang)")
    parser.add_argument("--variants", default="as_usual,ddp_first")
    args = parser.parse_args(argv)
    base_port = 20000 + (os.getpid() % 200) * 100
    with tempfile.TemporaryDirectory(prefix="torch-exit-hang-") as folder:
        for index, variant in enumerate(args.variants.split(",")):
            hangs = trials = 0
            for run in range(args.runs):
                port = base_port + (index * args.runs + run) * args.trials
                result = one_run(variant, args.trials, os.path.join(folder, f"{variant}-{run}"), port)
                hangs += result < 0
                trials += -result if result < 0 else result  # a hung trial counts as a trial
            print(f"{variant}: {hangs} hang(s) in {trials} trial(s) ({args.runs} runs of up to {args.trials})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
