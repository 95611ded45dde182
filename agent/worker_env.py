"""The environment and arguments a worker of the local agent starts with, as torchrun gives them."""

from __future__ import annotations

import os
from string import Template
from typing import Any

from elastiscope.progress_layout import AUTO_STEPS_ENV, CHANNEL_ENV
from elastiscope.stack_dump import STACK_FILE_ENV
from telemetry import tracing

__all__ = ["worker_env", "local_rank_env", "substitute_local_rank", "progress_env", "stack_dump_env"]


def worker_env(worker_group: Any, worker: Any, restart_count: int) -> dict[str, str]:
    """The variables a torchrun worker sees, plus TRACEPARENT when tracing is on.

    ``worker_group`` and ``worker`` are torch's ``WorkerGroup`` and ``Worker`` (ranks assigned).
    """
    spec = worker_group.spec
    env = {
        "RANK": str(worker.global_rank),
        "GROUP_RANK": str(worker_group.group_rank),
        "ROLE_RANK": str(worker.role_rank),
        "ROLE_NAME": spec.role,
        "LOCAL_WORLD_SIZE": str(spec.local_world_size),
        "WORLD_SIZE": str(worker.world_size),
        "GROUP_WORLD_SIZE": str(worker_group.group_world_size),
        "ROLE_WORLD_SIZE": str(worker.role_world_size),
        "MASTER_ADDR": str(worker_group.master_addr),
        "MASTER_PORT": str(worker_group.master_port),
        "TORCHELASTIC_RESTART_COUNT": str(restart_count),
        "TORCHELASTIC_MAX_RESTARTS": str(spec.max_restarts),
        "TORCHELASTIC_RUN_ID": spec.rdzv_handler.get_run_id(),
        "TORCHELASTIC_USE_AGENT_STORE": str(spec.rdzv_handler.use_agent_store),
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": os.getenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
    }
    env.update(local_rank_env(worker.local_rank, spec.virtual_local_rank))
    if "OMP_NUM_THREADS" in os.environ:
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    traceparent = tracing.traceparent()
    if traceparent:
        env["TRACEPARENT"] = traceparent
    return env


# Where a standby's boot finds our sitecustomize (a standby started before the worker's
# PYTHONPATH was known; see agent/processes/standby_boot.py).
PROGRESS_SITE_ENV = "ELASTISCOPE_PROGRESS_SITE"


def progress_env(record: str | None, site_dir: str | None) -> dict[str, str]:
    """The worker's progress record, and ``site_dir`` (our sitecustomize, which counts optimizer
    steps) first on its PYTHONPATH; no site_dir: steps are counted only if the script reports
    them. A worker whose environment opts out (``ELASTISCOPE_AUTO_STEPS=0``) gets no hook."""
    if not record:
        return {}
    env = {CHANNEL_ENV: record}
    if site_dir and os.environ.get(AUTO_STEPS_ENV, "1").strip().lower() not in ("0", "false", "no", "off"):
        path = os.environ.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{site_dir}{os.pathsep}{path}" if path else site_dir
        env[PROGRESS_SITE_ENV] = site_dir
    return env


def stack_dump_env(dump_file: str | None) -> dict[str, str]:
    """Where the worker's faulthandler writes its stacks when the agent asks (see
    elastiscope/stack_dump.py): armed at start-up by our sitecustomize."""
    return {STACK_FILE_ENV: dump_file} if dump_file else {}


def local_rank_env(local_rank: int, virtual_local_rank: bool) -> dict[str, str]:
    """LOCAL_RANK and CUDA_VISIBLE_DEVICES as torch sets them.

    With ``virtual_local_rank`` each worker sees only its own device, as device 0.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not virtual_local_rank:
        env = {"LOCAL_RANK": str(local_rank)}
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        return env
    if visible is None:
        device = str(local_rank)
    else:
        devices = visible.split(",")
        if local_rank >= len(devices):
            raise ValueError(
                f"local_rank {local_rank} exceeds available GPUs in CUDA_VISIBLE_DEVICES={visible}"
            )
        device = devices[local_rank].strip()
    return {"LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": device}


def substitute_local_rank(args: tuple, local_rank: int) -> list:
    """torch's ``${local_rank}`` macro in string arguments; other arguments pass through."""
    return [
        Template(a).safe_substitute(local_rank=str(local_rank)) if isinstance(a, str) else a
        for a in args
    ]
