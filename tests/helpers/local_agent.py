"""Shared pieces for the local agent tests: specs on torch's static rendezvous, telemetry capture,
and polling with deadlines."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

from telemetry.pipeline import Pipeline, Sink
from telemetry.records import MetricPoint
from telemetry.sinks.memory import MemorySink

TESTS = Path(__file__).resolve().parent.parent
WORKERS = TESTS / "workers"


def static_spec(
    entrypoint: Any,
    args: tuple = (),
    nproc: int = 4,
    max_restarts: int = 0,
    monitor_interval: float = 0.05,
    role: str = "trainer",
):
    """A WorkerSpec for one node on torch's static rendezvous over 127.0.0.1."""
    import torch.distributed.elastic.rendezvous.registry as rdzv_registry
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.elastic.utils.distributed import get_free_port

    from agent.api import WorkerSpec

    handler = rdzv_registry.get_rendezvous_handler(
        RendezvousParameters(
            backend="static", endpoint=f"127.0.0.1:{get_free_port()}",
            run_id=f"test-{uuid.uuid4().hex[:8]}", min_nodes=1, max_nodes=1, rank=0,
        )
    )
    return WorkerSpec(
        role=role, local_world_size=nproc, entrypoint=entrypoint, args=args,
        rdzv_handler=handler, max_restarts=max_restarts, monitor_interval=monitor_interval,
        local_addr="127.0.0.1",
    )


def script_spec(script: str, *args: Any, **kwargs: Any):
    """A spec whose workers run tests/workers/<script> with this interpreter."""
    return static_spec(sys.executable, ("-u", str(WORKERS / script), *map(str, args)), **kwargs)


class MetricCapture(Sink):
    """Keeps every MetricPoint (the memory sink keeps only events)."""

    name = "test-metrics"
    synchronous = True
    events = False

    def __init__(self) -> None:
        self.points: list[MetricPoint] = []

    def emit(self, record: MetricPoint) -> None:
        self.points.append(record)

    def values(self, name: str) -> list[float]:
        return [p.value for p in self.points if p.name == name]


def capture_pipeline() -> tuple[Pipeline, MemorySink, MetricCapture]:
    memory, metrics = MemorySink(), MetricCapture()
    return Pipeline([memory, metrics]), memory, metrics


def read_pids(out: Path, count: int) -> list[int] | None:
    files = [out / f"pid.{rank}" for rank in range(count)]
    if not all(f.exists() for f in files):
        return None
    return [int(f.read_text()) for f in files]


def process_alive(pid: int, started: float | None = None) -> bool:
    """True while ``pid`` runs (a zombie is dead; a pid reused by a newer process is dead)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 1.0:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def create_times(pids: list[int]) -> dict[int, float]:
    import psutil

    return {pid: psutil.Process(pid).create_time() for pid in pids}


def kill_quietly(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
