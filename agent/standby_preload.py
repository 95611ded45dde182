"""Which modules the next attempt's standbys import ahead, and the memory they may take.

A restart of a torch job spends seconds in its new workers importing torch and what the first
training step imports on first use (DDP's construction imports ``torch._dynamo``, with sympy
and numpy behind it: about as long again as ``import torch``). Standbys that imported them
while they waited take that off the restart's critical path
(:mod:`agent.processes.standby`). This module decides what they import:

* by default, :data:`TORCH_FIRST_STEP` -- but only once the current workers are seen to have
  loaded torch (its library in their memory maps): a script that does not use torch does not
  get it in its ``sys.modules`` from us;
* plus the modules the user names (``--preload``), always;
* nothing at all with ``preload=()`` given as the only choice (``--preload none``).

Every module of :data:`TORCH_FIRST_STEP` is safe to import ahead: importing it starts no
thread a cold ``import torch`` would not start, opens no file descriptor, sets no signal
handler, and reads none of the per-attempt variables (``tests/test_standby_preload.py``
checks the first three). Preloaded standbys cost memory: 289 MiB resident each here, 212 MiB
proportional (the rest is torch's libraries, shared with the workers); nearly all of the 212
MiB is private heap, which a fork server could share between standbys, separate interpreters
cannot. Past ``memory_limit`` bytes of proportional memory in all, they are replaced by bare
interpreters for the rest of the job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from agent.processes.usage import maps_file, read_memory
from telemetry.events import put_metric

__all__ = ["TORCH_FIRST_STEP", "DEFAULT_MEMORY_LIMIT", "StandbyPreload"]

logger = logging.getLogger(__name__)

# What a DDP job's first step imports, in import order: torch, the distributed package and
# DDP, the optimizers, and torch._dynamo (DDP's constructor imports it on first use).
TORCH_FIRST_STEP = ("torch", "torch.distributed", "torch.nn.parallel", "torch.optim", "torch._dynamo")
# Proportional memory all preloaded standbys of one agent may take, in bytes.
DEFAULT_MEMORY_LIMIT = 4 << 30
_TORCH_LIBRARY = "libtorch"


class StandbyPreload:
    """The preload set for standbys, learnt from the workers and bounded in memory.

    ``extra`` are modules always preloaded; ``auto`` adds :data:`TORCH_FIRST_STEP` once the
    workers are seen to use torch. ``memory_limit`` None leaves memory unbounded.
    """

    def __init__(self, extra: Iterable[str] = (), auto: bool = True,
                 memory_limit: int | None = DEFAULT_MEMORY_LIMIT) -> None:
        self.extra = tuple(extra)
        self.auto = auto
        self.memory_limit = memory_limit
        self.workers_use_torch = False
        self.over_limit = False
        self.last_memory: tuple[int, int] | None = None  # (RSS, PSS) of the waiting standbys

    @property
    def undecided(self) -> bool:
        """Whether a later look at the workers may still change the set."""
        return self.auto and not self.workers_use_torch and not self.over_limit

    def modules(self, worker_pids: Iterable[int]) -> tuple[str, ...]:
        """The modules standbys should import now; looks at ``worker_pids`` while undecided."""
        if self.over_limit:
            return ()
        if self.undecided and any(maps_file(pid, _TORCH_LIBRARY) for pid in worker_pids):
            self.workers_use_torch = True
        chosen = TORCH_FIRST_STEP if self.workers_use_torch else ()
        return chosen + tuple(m for m in self.extra if m not in chosen)

    def publish_memory(self, role: str) -> None:
        """The waiting standbys' memory as last measured (RSS and PSS, bytes; 0 before any)."""
        rss, pss = self.last_memory or (0, 0)
        put_metric(f"workers.{role}.standby.rss_bytes", rss)
        put_metric(f"workers.{role}.standby.pss_bytes", pss)

    def measure(self, standby_pids: Iterable[int]) -> bool:
        """Sample the waiting standbys' memory; True if they exceed the limit (from then on,
        :meth:`modules` is empty and the caller should refill with bare standbys)."""
        rss = pss = 0
        for pid in standby_pids:
            sample = read_memory(pid)
            if sample is not None:
                rss, pss = rss + sample[0], pss + sample[1]
        self.last_memory = (rss, pss)
        if self.memory_limit is not None and pss > self.memory_limit and not self.over_limit:
            self.over_limit = True
            logger.warning(
                "preloaded standbys take %d MiB (proportional), over the limit of %d MiB: "
                "the next restarts start from bare interpreters",
                pss >> 20, self.memory_limit >> 20,
            )
            return True
        return False
