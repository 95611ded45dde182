"""What ``elastiscope run`` launches: the worker spec and the local agent's options, from the
checked arguments, as torchrun builds them.

torch is imported inside the functions that need it: this module is imported with the rest of
the command, and argument checking must not wait for torch to load.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from typing import Any, Callable, NamedTuple

from agent.api import WorkerSpec
from agent.python_cmdline import parse_python_args
from agent.stalls import StallPolicy
from agent.cli.errors import JobError, UsageError, first_line
from agent.cli.run_path import run_script_path
from agent.standby_preload import DEFAULT_MEMORY_LIMIT
from agent.cli.validate import (
    is_standalone,
    parse_endpoint,
    parse_nnodes,
    parse_preload,
    parse_ranks_filter,
    parse_rdzv_conf,
)

__all__ = ["LaunchPlan", "LaunchParts", "plan_launch", "launch_parts", "settle_rendezvous",
           "resolve_nproc"]

log = logging.getLogger("agent.cli")

DEFAULT_MASTER_PORT = 29500
DEFAULT_RENDEZVOUS_TIMEOUT = 900  # seconds, torchrun's default for --rdzv-conf timeout
DEFAULT_SHUTDOWN_TIMEOUT = "30"  # seconds, when neither the flag nor the variable says


class LaunchPlan(NamedTuple):
    spec: WorkerSpec
    agent_options: dict[str, Any]  # LocalElasticAgent's keyword arguments besides the spec
    entry_name: str  # what failure reports call the job


class _Rendezvous(NamedTuple):
    endpoint: str
    conf: dict[str, Any]
    master_addr: str | None
    master_port: int | None


def settle_rendezvous(args: argparse.Namespace) -> None:
    """torchrun's defaults that depend on other flags, written into ``args``.

    A standalone node runs on an embedded c10d store at a free port, under a fresh run id.
    """
    if is_standalone(args):
        args.rdzv_backend = "c10d"
        args.rdzv_endpoint = "localhost:0"
        args.rdzv_id = str(uuid.uuid4())
    if args.master_port is None:
        args.master_port = DEFAULT_MASTER_PORT


def _usable_cpus() -> int | None:
    """The CPUs this process may run on (taskset and cgroups count), as torchrun counts "cpu"."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks on this platform (macOS)
        return os.cpu_count()


def resolve_nproc(text: str) -> int:
    """torchrun's rules for auto/cpu/gpu/xpu (torch is imported only for the named values)."""
    try:
        return int(text)
    except ValueError:
        pass
    import torch

    if text == "cpu" or (text == "auto" and not torch.accelerator.is_available()):
        return _usable_cpus()
    if text == "auto":
        return torch.accelerator.device_count()
    device = {"gpu": torch.cuda, "xpu": torch.xpu}[text]
    if not device.is_available():
        raise UsageError(f"--nproc-per-node {text}: no {text.upper()} is available on this host")
    return device.device_count()


def _entrypoint(args: argparse.Namespace) -> tuple[Callable | str, list[str]]:
    if args.run_path:
        return run_script_path, [args.training_script, *args.training_script_args]
    if args.no_python:
        return args.training_script, list(args.training_script_args)
    cmd_args = ["-u"] + (["-m"] if args.module else []) + [args.training_script]
    return os.getenv("PYTHON_EXEC", sys.executable), cmd_args + list(args.training_script_args)


def _entrypoint_name(entrypoint: Callable | str, args: list[str]) -> str:
    """What torchrun's failure report calls the job: the function, the script or module run by
    the interpreter, or the program."""
    if callable(entrypoint):
        return entrypoint.__name__
    if entrypoint == sys.executable or entrypoint == os.getenv("PYTHON_EXEC"):
        command = parse_python_args(args)
        return command.module or command.script or command.command or ""
    return entrypoint


def _logs_specs_class(name: str | None, entry_points: Callable[[], Any] | None = None):
    """torchrun's plugin point: the ``torchrun.logs_specs`` entry point called ``name``.

    ``entry_points`` is ``importlib.metadata.entry_points`` unless the caller has its own (the
    module API passes the one its module names, so that patching it there takes effect).
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs

    if name is None:
        return DefaultLogsSpecs
    if entry_points is None:
        from importlib import metadata  # reads every installed distribution: only when asked to

        entry_points = metadata.entry_points
    group = entry_points().select(group="torchrun.logs_specs")
    if not group.select(name=name):
        raise UsageError(f"--logs-specs {name!r}: no such torchrun.logs_specs entry point")
    return group[name].load()


def _logs_specs(args: argparse.Namespace, entry_points: Callable[[], Any] | None = None) -> Any:
    from torch.distributed.elastic.multiprocessing import Std

    try:
        redirects, tee = Std.from_str(args.redirects), Std.from_str(args.tee)
    except ValueError:
        raise UsageError(f"--redirects/--tee must be 0-3 or LOCAL_RANK:N,..., not "
                         f"{args.redirects!r}/{args.tee!r}") from None
    return _logs_specs_class(args.logs_specs, entry_points)(
        log_dir=args.log_dir, redirects=redirects, tee=tee,
        local_ranks_filter=parse_ranks_filter(args.local_ranks_filter),
    )


def _numa_options(args: argparse.Namespace) -> Any:
    if args.numa_binding is None:
        return None
    from torch.numa.binding import AffinityMode, NumaOptions

    return NumaOptions(affinity_mode=AffinityMode(args.numa_binding))


def _rendezvous(args: argparse.Namespace) -> _Rendezvous:
    conf: dict[str, Any] = parse_rdzv_conf(args.rdzv_conf)
    conf.setdefault("timeout", DEFAULT_RENDEZVOUS_TIMEOUT)
    endpoint = args.rdzv_endpoint
    master_addr = master_port = None
    if args.rdzv_backend == "static":
        conf["rank"] = args.node_rank
        if not endpoint:
            endpoint = f"{args.master_addr}:{args.master_port}"
        master_addr, master_port = parse_endpoint(endpoint)
        if master_port is None:
            raise UsageError(f"--rdzv-endpoint {endpoint!r} needs a port for static rendezvous")
    elif args.node_rank != 0:
        log.warning("--node-rank is only used by static rendezvous; ignored for %s",
                    args.rdzv_backend)
    return _Rendezvous(endpoint, conf, master_addr, master_port)


def _rendezvous_handler(args: argparse.Namespace, rendezvous: _Rendezvous) -> Any:
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.elastic.rendezvous import registry as rdzv_registry

    min_nodes, max_nodes = parse_nnodes(args.nnodes)
    params = RendezvousParameters(
        backend=args.rdzv_backend, endpoint=rendezvous.endpoint, run_id=args.rdzv_id,
        min_nodes=min_nodes, max_nodes=max_nodes, local_addr=args.local_addr, **rendezvous.conf,
    )
    try:
        return rdzv_registry.get_rendezvous_handler(params)
    except ValueError as e:  # unknown backend, bad configuration value
        raise UsageError(f"rendezvous: {first_line(e)}") from None
    except Exception as e:  # cannot reach the store, ...
        # torch's message ends "See inner exception for details": name the endpoint and
        # give that inner exception, since the traceback holding it is not shown.
        cause = e.__cause__
        message = first_line(e)
        if cause is not None:
            message = f"{message.rstrip('. ')}: {type(cause).__name__}: {first_line(cause)}"
        raise JobError(f"rendezvous: {args.rdzv_backend} at {rendezvous.endpoint}: "
                       f"{type(e).__name__}: {message}") from None


def _agent_options(args: argparse.Namespace, logs_specs: Any) -> dict[str, Any]:
    shutdown_timeout = args.shutdown_timeout
    if shutdown_timeout is None:
        shutdown_timeout = int(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT",
                                              DEFAULT_SHUTDOWN_TIMEOUT))
    stragglers = {name: getattr(args, name) for name in ("straggler_threshold", "straggler_steps")
                  if getattr(args, name) is not None}  # unset: the agent's defaults
    return dict(
        **stragglers,
        logs_specs=logs_specs, start_method=args.start_method,
        log_line_prefix_template=os.getenv("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"),
        shutdown_timeout=shutdown_timeout,
        warm_standby=not args.no_warm_standby,
        count_optimizer_steps=not args.no_progress,
        **_standby_options(args),
        stall_policy=_stall_policy(args),
    )


def _standby_options(args: argparse.Namespace) -> dict[str, Any]:
    preload, preload_torch = parse_preload(args.preload)
    limit = args.standby_memory_limit
    return dict(preload=preload, preload_torch=preload_torch,
                standby_memory_limit=DEFAULT_MEMORY_LIMIT if limit is None else (limit << 20) or None)


def _stall_policy(args: argparse.Namespace) -> StallPolicy:
    timeout = args.stall_timeout
    return StallPolicy(timeout=timeout if isinstance(timeout, float) else None,
                       first_step_timeout=args.first_step_timeout, action=args.on_stall,
                       enabled=timeout is not None)


class LaunchParts(NamedTuple):
    """What the checked arguments say to launch, before any rendezvous is reached."""
    rdzv_endpoint: str
    rdzv_conf: dict[str, Any]
    logs_specs: Any
    numa_options: Any
    entrypoint: Callable | str
    cmd_args: list[str]
    agent_options: dict[str, Any]  # LocalElasticAgent's keyword arguments besides the spec


def launch_parts(args: argparse.Namespace, entry_points: Callable[[], Any] | None = None) -> LaunchParts:
    """The launch as torchrun reads it from ``args`` (``agent.run.config_from_args`` uses it);
    ``entry_points`` as for ``--logs-specs`` plugins (``importlib.metadata``'s by default)."""
    rendezvous = _rendezvous(args)
    logs_specs = _logs_specs(args, entry_points)
    entrypoint, cmd_args = _entrypoint(args)
    return LaunchParts(rendezvous.endpoint, rendezvous.conf, logs_specs, _numa_options(args),
                       entrypoint, cmd_args, _agent_options(args, logs_specs))


def plan_launch(args: argparse.Namespace, nproc: int) -> LaunchPlan:
    """The spec and agent options for ``nproc`` workers per node; reaches the rendezvous store."""
    rendezvous = _rendezvous(args)
    logs_specs = _logs_specs(args)
    numa_options = _numa_options(args)
    handler = _rendezvous_handler(args, rendezvous)
    entrypoint, cmd_args = _entrypoint(args)
    spec = WorkerSpec(
        role=args.role, local_world_size=nproc, entrypoint=entrypoint, args=tuple(cmd_args),
        rdzv_handler=handler, max_restarts=args.max_restarts,
        monitor_interval=args.monitor_interval, master_addr=rendezvous.master_addr,
        master_port=rendezvous.master_port, local_addr=args.local_addr,
        event_log_handler=args.event_log_handler, numa_options=numa_options,
        duplicate_stdout_filters=args.duplicate_stdout_filters,
        duplicate_stderr_filters=args.duplicate_stderr_filters,
        virtual_local_rank=args.virtual_local_rank,
    )
    return LaunchPlan(spec, _agent_options(args, logs_specs), _entrypoint_name(entrypoint, cmd_args))
