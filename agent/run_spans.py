"""The spans of an agent's run: each step's name spelled once, and the ``role`` every span carries.

``agent.api`` opens one around each step of torch's state machine (docs/reference.md, "Traces",
draws the tree). Spans are real only while OpenTelemetry is configured; otherwise ``step`` costs
a null context.
"""

from __future__ import annotations

from typing import Any, ContextManager

from telemetry import tracing

__all__ = [
    "RUN",
    "RENDEZVOUS",
    "ASSIGN_WORKER_RANKS",
    "START_WORKERS",
    "STOP_WORKERS",
    "RESTART",
    "EXIT_BARRIER",
    "step",
]

RUN = "run"
RENDEZVOUS = "rendezvous"
ASSIGN_WORKER_RANKS = "assign_worker_ranks"
START_WORKERS = "start_workers"
STOP_WORKERS = "stop_workers"
# Carries ``reason``: telemetry.names.RESTART_FAILURE or RESTART_MEMBERSHIP.
RESTART = "restart"
EXIT_BARRIER = "exit_barrier"


def step(name: str, role: str, **attributes: Any) -> ContextManager[Any]:
    """The span of one step of ``role``'s run (a null context while tracing is off)."""
    return tracing.span(name, role=role, **attributes)
