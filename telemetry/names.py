"""The names every other module shares: event kinds, worker states, restart reasons.

A leaf: imports nothing of ours (and nothing from torch), so any module may use it. Spell a
name here once and refer to it everywhere else; a literal event name anywhere else is a bug
waiting for a rename.
"""

from __future__ import annotations

__all__ = [
    "TORCH_STATUS_PREFIX",
    "TORCH_RENDEZVOUS",
    "TORCH_ASSIGN_WORKER_RANKS",
    "TORCH_START",
    "TORCH_SUCCEEDED",
    "TORCH_FAILED",
    "TORCH_TERMINATED",
    "RUN_START",
    "RUN_END",
    "STATE_CHANGE",
    "RESTART",
    "RENDEZVOUS_PREFIX",
    "RENDEZVOUS_COMPLETE",
    "WORKER_FAILED",
    "WORKER_STRAGGLER",
    "WORKER_STRAGGLER_RECOVERED",
    "ENDPOINT_STARTED",
    "AGENT",
    "WORKER",
    "UNKNOWN",
    "INIT",
    "HEALTHY",
    "UNHEALTHY",
    "STOPPED",
    "SUCCEEDED",
    "FAILED",
    "TERMINATED",
    "WORKER_STATES",
    "RESTART_FAILURE",
    "RESTART_MEMBERSHIP",
    "RESTART_REASONS",
    "WORKER_STALLED",
    "WORKER_STALL_ENDED",
    "RESTART_STALL",
    "torch_status",
    "FIRST_STEP",
    "ATTEMPT_GOODPUT",
    "BADPUT_STARTUP",
    "BADPUT_RENDEZVOUS",
    "BADPUT_RESTART",
    "BADPUT_STALL",
    "BADPUT_LOST_PROGRESS",
    "BADPUT_SHUTDOWN",
    "BADPUT_REASONS",
]

# ---- states ---------------------------------------------------------------------------------
# torch's WorkerState values, as events, metric labels and the endpoint spell them.
UNKNOWN = "UNKNOWN"
INIT = "INIT"
HEALTHY = "HEALTHY"
UNHEALTHY = "UNHEALTHY"
STOPPED = "STOPPED"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
WORKER_STATES = (UNKNOWN, INIT, HEALTHY, UNHEALTHY, STOPPED, SUCCEEDED, FAILED)
# A worker (not a group) the agent stopped: torch's per-worker event state, and ours in /status.
TERMINATED = "TERMINATED"

# ---- event kinds ---------------------------------------------------------------------------
# torch's agent names its events torchelastic.worker.status.<STATE>; ours record the same.
TORCH_STATUS_PREFIX = "torchelastic.worker.status."


def torch_status(state: str) -> str:
    """torch's event name for a worker or agent status, e.g. ``SUCCEEDED``."""
    return TORCH_STATUS_PREFIX + state


TORCH_RENDEZVOUS = torch_status("RENDEZVOUS")
TORCH_ASSIGN_WORKER_RANKS = torch_status("ASSIGN_WORKER_RANKS")
TORCH_START = torch_status("START")
TORCH_SUCCEEDED = torch_status(SUCCEEDED)
TORCH_FAILED = torch_status(FAILED)
TORCH_TERMINATED = torch_status(TERMINATED)

# Elastiscope's own kinds (docs/reference.md says what each means and carries).
RUN_START = "elastiscope.agent.run_start"
RUN_END = "elastiscope.agent.run_end"
STATE_CHANGE = "elastiscope.agent.state_change"
RESTART = "elastiscope.agent.restart"
# torch's rendezvous events, bridged, are named elastiscope.rendezvous.<torch's name>.
RENDEZVOUS_PREFIX = "elastiscope.rendezvous."
RENDEZVOUS_COMPLETE = RENDEZVOUS_PREFIX + "complete"
WORKER_FAILED = "elastiscope.worker.failed"
# A worker whose forward pass stays slower than its peers' (agent/stragglers.py), and its recovery.
WORKER_STRAGGLER = "elastiscope.worker.straggler"
WORKER_STRAGGLER_RECOVERED = "elastiscope.worker.straggler_recovered"
ENDPOINT_STARTED = "elastiscope.endpoint.started"

# ---- event sources (EventSource's values) --------------------------------------------------
AGENT = "AGENT"
WORKER = "WORKER"

# ---- restart reasons ----------------------------------------------------------------------
# Why the agent restarts its worker group, as events and the ``reason`` label spell it.
RESTART_FAILURE = "failure"
RESTART_MEMBERSHIP = "membership"
RESTART_REASONS = (RESTART_FAILURE, RESTART_MEMBERSHIP)

# ---- goodput (agent/goodput.py) -------------------------------------------------------------
# An attempt's first training step, and an attempt's split of its wall time.
FIRST_STEP = "elastiscope.agent.first_step"
ATTEMPT_GOODPUT = "elastiscope.agent.attempt_goodput"
# Why time was not productive training, as events and the ``reason`` label spell it.
BADPUT_STARTUP = "startup"  # launch -> the run's first step
BADPUT_RENDEZVOUS = "rendezvous"  # run start -> launch; a membership change -> first step after it
BADPUT_RESTART = "restart"  # a failure -> the first step after it
BADPUT_STALL = "stall"  # no progress while workers run (fed by the hang detection)
BADPUT_LOST_PROGRESS = "lost_progress"  # steps redone after a resume; the step a failure cut short
BADPUT_SHUTDOWN = "shutdown"  # the last step -> run end, when no restart follows
BADPUT_REASONS = (BADPUT_STARTUP, BADPUT_RENDEZVOUS, BADPUT_RESTART, BADPUT_STALL,
                  BADPUT_LOST_PROGRESS, BADPUT_SHUTDOWN)
# ---- stalls (issue 14) --------------------------------------------------------------------
WORKER_STALLED = "elastiscope.worker.stalled"
WORKER_STALL_ENDED = "elastiscope.worker.stall_ended"
# A restart because workers stopped progressing (--on-stall restart). Not in RESTART_REASONS:
# its series appear with the first stall restart, not at 0 in every run.
RESTART_STALL = "stall"
