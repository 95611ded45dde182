"""How long each rank computes before it enters the step's collectives: the straggler signal.

In synchronous data-parallel training every rank's step period is the same (the gradient
all-reduce waits for the slowest rank), so the step period cannot name a straggler. What
differs is the work a rank does on its own before the first collective of the step: its forward
pass. This module times, without a change to the script, every forward that
``DistributedDataParallel`` runs through the user's module (``DistributedDataParallel.
_run_ddp_forward``: after DDP's own pre-forward, which may broadcast buffers, so that
collective's wait is not counted) and adds it to the step's forward time in the progress record;
the writer stores the step's total when the step ends (``ProgressWriter.step``).

Why this and not the alternatives (measured in bench/step_telemetry.py, see docs/operations.md):
module forward hooks make ``nn.Module.__call__`` take its slow path, about 2.7 us per call on
this machine, over the whole step-telemetry budget of 2 us; one wrapped method costs a frame,
two clock reads and two cheap calls, about 0.4 us. DDP's own timing
(``_get_ddp_logging_data()``: ``avg_forward_compute_time`` ...) is recorded at the first ten
iterations and then every hundredth, as an average since the start: too coarse to follow a rank
that slows down and recovers.

Forwards run with gradients off (an evaluation loop) are not counted: they are not part of a
training step. Under ``torch.compile`` Dynamo traces DDP's forward, this method included: the
timing stands aside while it traces (a clock read would break the graph), and the compiled code
no longer calls this method, so a compiled DDP module reports no forward time.

The patch is applied once the script has imported torch (``import torch`` imports DDP's module
too), never earlier; a torch without that method is left alone. Checked with torch 2.13.
"""

from __future__ import annotations

import os
from time import perf_counter

from elastiscope.import_watch import when_imported
from elastiscope.progress_channel import channel

__all__ = ["install", "patch", "forward_timing_enabled", "FORWARD_TIMING_ENV"]

FORWARD_TIMING_ENV = "ELASTISCOPE_FORWARD_TIMING"  # "0": DDP forwards are not timed
_WATCHED = "torch.nn.parallel.distributed"
_METHOD = "_run_ddp_forward"  # DDP's call of the user's module, between its pre- and post-forward
_MARK = "_elastiscope_timed"


def forward_timing_enabled() -> bool:
    return os.environ.get(FORWARD_TIMING_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def install() -> None:
    """Arrange for DDP forwards to be timed once the script imports DDP (idempotent)."""
    if forward_timing_enabled():
        # DDP's module runs in the middle of ``import torch``, before torch.compiler exists:
        # wait for torch as a whole, then for DDP (already there, or imported later).
        when_imported("torch", _when_torch_is_ready)


def _when_torch_is_ready(torch) -> None:
    when_imported(_WATCHED, patch)


def patch(module) -> None:
    """Wrap DDP's call of the user's module in ``module`` (torch.nn.parallel.distributed, with
    torch imported whole); run by ``install()`` once the script imports it (public for the
    bench)."""
    ddp = getattr(module, "DistributedDataParallel", None)
    original = getattr(ddp, _METHOD, None)
    torch = getattr(module, "torch", None)
    grad_enabled = getattr(torch, "is_grad_enabled", None)
    compiling = getattr(getattr(torch, "compiler", None), "is_dynamo_compiling", None)
    if original is None or grad_enabled is None or compiling is None or getattr(original, _MARK, False):
        return
    setattr(ddp, _METHOD, _timed(original, grad_enabled, compiling))


def _timed(original, grad_enabled, compiling):
    """``original`` (DDP's method) with its time added to the step's forward time."""
    writer_of = channel.writer

    def run_ddp_forward(self, *inputs, **kwargs):
        if compiling():  # Dynamo is tracing this: no clock read (a graph break) in its graph
            return original(self, *inputs, **kwargs)
        start = perf_counter()
        output = original(self, *inputs, **kwargs)
        writer = writer_of()
        if writer is not None and grad_enabled():
            writer.forward_time += perf_counter() - start
        return output

    run_ddp_forward.__name__ = original.__name__
    run_ddp_forward.__qualname__ = original.__qualname__
    run_ddp_forward.__doc__ = original.__doc__
    run_ddp_forward.__wrapped__ = original
    setattr(run_ddp_forward, _MARK, True)
    return run_ddp_forward
