"""Callable entry points that talk over gloo (these import torch, unlike callables.py)."""
import os


def all_reduce_then_return():
    """torch's ``_dist_sum`` shape: join the group, one collective, return at once.

    Ranks finish the all-reduce at slightly different moments; a rank whose process exits as
    soon as it returns closes its gloo pairs under a peer still inside the collective.
    """
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend="gloo")
    value = torch.tensor([int(os.environ["RANK"]) + 1])
    dist.all_reduce(value)
    return int(value.item())
