"""torchrun as a module: the drop-in for ``torch.distributed.run``.

``main(args=None)`` launches like ``torchrun`` with the same arguments, from code:
``get_args_parser``, ``parse_args``, ``config_from_args`` (a ``agent.launcher.LaunchConfig``,
the command and its arguments), ``run``, and the helpers ``parse_min_max_nnodes``,
``determine_local_world_size``, ``get_use_env``, ``get_rdzv_endpoint`` keep torch's names
and contracts. Bad input raises ``ValueError`` (our ``UsageError`` is one), a failed worker
torch's ``ChildFailedError``, and an exception of the agent propagates as it is.

The parser is ``elastiscope run``'s (agent/cli/arguments.py: each flag defined once), so the
arguments are torchrun's plus the observability flags, which only the command acts on: from
code, telemetry is what the process configured (see ``agent.launcher``). On the command line,
``elastiscope run`` turns the same errors into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
from importlib import metadata
from typing import Callable, Sequence

from torch.distributed.elastic.multiprocessing.errors import record

from agent.cli.arguments import build_run_parser
from agent.cli.errors import UsageError
from agent.cli.run_path import run_script_path
from agent.cli.spec import launch_parts, resolve_nproc, settle_rendezvous
from agent.cli.validate import check_run_args
from agent.launcher import LaunchConfig, elastic_launch

__all__ = ["main", "run", "get_args_parser", "parse_args", "config_from_args",
           "parse_min_max_nnodes", "determine_local_world_size", "get_use_env",
           "get_rdzv_endpoint", "run_script_path"]

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    """torchrun's arguments (and ours); errors raise ``UsageError``, a ValueError."""
    return build_run_parser()


def parse_args(args: Sequence[str] | None) -> argparse.Namespace:
    return get_args_parser().parse_args(args)


def parse_min_max_nnodes(nnodes: str) -> tuple[int, int]:
    """``N`` or ``MIN:MAX`` as (MIN, MAX); RuntimeError for more parts, as torch's."""
    parts = nnodes.split(":")
    if len(parts) > 2:
        raise RuntimeError(f'nnodes={nnodes} is not in "MIN:MAX" format')
    return int(parts[0]), int(parts[-1])


def determine_local_world_size(nproc_per_node: str) -> int:
    """An integer, or auto/cpu/gpu/xpu resolved on this host; ValueError for anything else."""
    try:
        return resolve_nproc(nproc_per_node)
    except KeyError:
        raise ValueError(f"unsupported nproc_per_node value: {nproc_per_node!r}") from None


def get_rdzv_endpoint(args: argparse.Namespace) -> str:
    """A static rendezvous without an endpoint meets at the master's address and port."""
    if args.rdzv_backend == "static" and not args.rdzv_endpoint:
        return f"{args.master_addr}:{args.master_port}"
    return args.rdzv_endpoint


def get_use_env(args: argparse.Namespace) -> bool:
    """torch.distributed.launch's legacy ``--use-env``; torchrun always passes LOCAL_RANK in the
    environment, so True unless ``args`` says otherwise."""
    return getattr(args, "use_env", True)


def config_from_args(args: argparse.Namespace) -> tuple[LaunchConfig, Callable | str, list[str]]:
    """The launch ``args`` describe: its config, the command (a program or a function) and the
    command's arguments. ValueError (``UsageError``) for bad input."""
    check_run_args(args)
    min_nodes, max_nodes = parse_min_max_nnodes(args.nnodes)
    nproc = determine_local_world_size(args.nproc_per_node)
    if nproc < 1:
        raise UsageError(f"--nproc-per-node {args.nproc_per_node} resolved to {nproc} workers")
    if "OMP_NUM_THREADS" not in os.environ and nproc > 1:
        os.environ["OMP_NUM_THREADS"] = "1"
        logger.warning("OMP_NUM_THREADS not set: using 1 per worker (set it to tune)")
    # The module's own `metadata`, looked up at the call, so that patching it takes effect.
    parts = launch_parts(args, entry_points=lambda: metadata.entry_points())
    options = parts.agent_options
    config = LaunchConfig(
        min_nodes=min_nodes, max_nodes=max_nodes, nproc_per_node=nproc, run_id=args.rdzv_id,
        role=args.role, rdzv_endpoint=parts.rdzv_endpoint,  # get_rdzv_endpoint's, for static
        rdzv_backend=args.rdzv_backend, rdzv_configs=parts.rdzv_conf,
        max_restarts=args.max_restarts, monitor_interval=args.monitor_interval,
        start_method=args.start_method, log_line_prefix_template=options["log_line_prefix_template"],
        local_addr=args.local_addr, logs_specs=parts.logs_specs,
        event_log_handler=args.event_log_handler, numa_options=parts.numa_options,
        signals_to_handle=args.signals_to_handle,
        duplicate_stdout_filters=args.duplicate_stdout_filters,
        duplicate_stderr_filters=args.duplicate_stderr_filters,
        virtual_local_rank=args.virtual_local_rank, shutdown_timeout=options["shutdown_timeout"],
    )
    return config, parts.entrypoint, parts.cmd_args


def run(args: argparse.Namespace) -> None:
    """Launch what ``args`` describe on this node and wait for it to end."""
    settle_rendezvous(args)  # --standalone, or one node without endpoint: an embedded c10d store
    config, cmd, cmd_args = config_from_args(args)
    elastic_launch(config=config, entrypoint=cmd)(*cmd_args)


@record
def main(args: Sequence[str] | None = None) -> None:
    run(parse_args(args))


if __name__ == "__main__":
    main()
