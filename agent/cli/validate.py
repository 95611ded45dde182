"""Checks that turn bad input to ``elastiscope run`` into one-line UsageErrors.

Everything here needs neither torch nor the network, so a mistake is reported before anything
starts or any file is written. The parsers of composite values (``--nnodes MIN:MAX``,
``HOST:PORT``, ``KEY=VALUE,...``) live here too: what checks a value also reads it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil

from agent.cli.arguments import NPROC_NAMES
from agent.cli.errors import UsageError

__all__ = ["check_run_args", "parse_nnodes", "parse_endpoint", "parse_rdzv_conf",
           "parse_ranks_filter", "is_standalone"]


def parse_nnodes(text: str) -> tuple[int, int]:
    """``N`` or ``MIN:MAX`` as (MIN, MAX)."""
    parts = text.split(":")
    try:
        if len(parts) == 1:
            low = high = int(parts[0])
        elif len(parts) == 2:
            low, high = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise UsageError(f"--nnodes must be N or MIN:MAX, not {text!r}") from None
    if not 0 < low <= high:
        raise UsageError(f"--nnodes needs 0 < MIN <= MAX, got {text!r}")
    return low, high


def _check_nproc(text: str) -> None:
    try:
        n = int(text)
    except ValueError:
        if text not in NPROC_NAMES:
            raise UsageError(
                f"--nproc-per-node must be a positive integer or one of {', '.join(NPROC_NAMES)}, "
                f"not {text!r}"
            ) from None
        return
    if n < 1:
        raise UsageError(f"--nproc-per-node must be at least 1, not {n}")


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>[^:]*))?$")


def parse_endpoint(endpoint: str, flag: str = "--rdzv-endpoint") -> tuple[str, int | None]:
    """HOST[:PORT] or [IPv6][:PORT]; the port, when present, must be 0-65535."""
    m = _HOST_PORT.match(endpoint.strip())
    if not m:
        raise UsageError(f"{flag} must be HOST[:PORT], not {endpoint!r}")
    host = m.group("v6") or m.group("host")
    port_text = m.group("port")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"{flag} {endpoint!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)


def parse_rdzv_conf(text: str) -> dict[str, str]:
    """``KEY=VALUE,KEY2=VALUE2`` as a dict."""
    conf: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"--rdzv-conf must be KEY=VALUE,..., not {text!r}")
        conf[key.strip()] = value.strip()
    return conf


def parse_preload(text: str | None) -> tuple[tuple[str, ...], bool]:
    """``--preload``: (the modules named, whether torch's first-step modules may be added)."""
    if text is None:
        return (), True
    if text.strip().lower() == "none":
        return (), False
    modules = tuple(m.strip() for m in text.split(",") if m.strip())
    for module in modules:
        if not all(part.isidentifier() for part in module.split(".")):
            raise UsageError(f"--preload: {module!r} is not a module name")
    return modules, True


def parse_ranks_filter(text: str) -> set[int] | None:
    """``0,1`` as {0, 1}; empty means every rank (None)."""
    if not text:
        return None
    try:
        ranks = {int(r) for r in text.split(",")}
    except ValueError:
        raise UsageError(
            f"--local-ranks-filter must be a comma-separated list of integers, not {text!r}"
        ) from None
    return ranks


def _check_entrypoint(args: argparse.Namespace) -> None:
    script = args.training_script
    if args.module:
        if args.no_python and not args.run_path:
            raise UsageError("--no-python and --module cannot be used together")
        return
    if args.no_python and not args.run_path:
        if not (shutil.which(script) or (os.path.isfile(script) and os.access(script, os.X_OK))):
            raise UsageError(f"program not found or not executable: {script}")
        return
    if not os.path.isfile(script):
        raise UsageError(f"training script not found: {script}")


def is_standalone(args: argparse.Namespace) -> bool:
    """torchrun's rule: --standalone, or one static node with no endpoint and no master port."""
    if args.standalone:
        return True
    _, max_nodes = parse_nnodes(args.nnodes)
    return (
        args.rdzv_backend == "static"
        and not args.rdzv_endpoint
        and args.master_port is None
        and max_nodes == 1
    )


def check_run_args(args: argparse.Namespace) -> None:
    """Every check that needs neither torch nor the network; UsageError on the first problem."""
    parse_nnodes(args.nnodes)
    _check_nproc(args.nproc_per_node)
    if args.max_restarts < 0:
        raise UsageError(f"--max-restarts must be >= 0, not {args.max_restarts}")
    if not args.monitor_interval > 0:
        raise UsageError(f"--monitor-interval must be > 0, not {args.monitor_interval}")
    if args.shutdown_timeout is not None and args.shutdown_timeout < 0:
        raise UsageError(f"--shutdown-timeout must be >= 0, not {args.shutdown_timeout}")
    if args.rdzv_endpoint and not args.standalone:
        _, port = parse_endpoint(args.rdzv_endpoint)
        if port is None and args.rdzv_backend == "static":
            raise UsageError(f"--rdzv-endpoint {args.rdzv_endpoint!r} needs a port for static "
                             "rendezvous")
    parse_rdzv_conf(args.rdzv_conf)
    parse_preload(args.preload)
    if args.standby_memory_limit is not None and args.standby_memory_limit < 0:
        raise UsageError(f"--standby-memory-limit must be >= 0, not {args.standby_memory_limit}")
    parse_ranks_filter(args.local_ranks_filter)
    if args.master_port is not None and not 0 <= args.master_port <= 65535:
        raise UsageError(f"--master-port must be between 0 and 65535, not {args.master_port}")
    _check_entrypoint(args)
