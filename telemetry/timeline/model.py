"""What a run's timeline is made of: the events read back, and the summary built from them.

Plain dataclasses, so ``elastiscope events --json`` is ``dataclasses.asdict`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["TimelineError", "LogEvent", "Failure", "Restart", "Stall", "Attempt", "RunSummary", "JobTimeline"]


class TimelineError(Exception):
    """The log cannot be read; the message is one line meant for a person."""


@dataclass
class LogEvent:
    name: str
    source: str
    timestamp: int  # ms since the epoch
    metadata: dict[str, Any]

    @property
    def state(self) -> Any:
        return self.metadata.get("state")


@dataclass
class Failure:
    timestamp: int
    attempt: int
    global_rank: Any
    local_rank: Any
    exit_code: Any
    signal: Any
    pid: Any
    error: str
    detect_latency_ms: Any = None
    hostname: Any = None
    group_rank: Any = None
    # The worker's log files, when its output went to files.
    stdout_log: Any = None
    stderr_log: Any = None
    # Whether this failure is the job's root cause (False: collateral, it died after a peer;
    # None: the log does not say), and which rank the agent named as the root cause.
    root_cause: Any = None
    root_cause_rank: Any = None

    @property
    def exited_at(self) -> float:
        """When the worker exited (ms): the event's time less the time it took to be seen."""
        try:
            return self.timestamp - float(self.detect_latency_ms or 0)
        except (TypeError, ValueError):
            return float(self.timestamp)


@dataclass
class Restart:
    timestamp: int
    number: int
    reason: str
    failed_ranks: list
    remaining_restarts: Any
    # restart event -> the group HEALTHY again (None: it never got there)
    duration_ms: float | None = None


@dataclass
class Stall:
    """Workers found without progress (``elastiscope.worker.stalled``): who, who is to blame,
    where each rank was, what the agent did, where the stacks are kept."""

    timestamp: int
    attempt: int
    stalled_ranks: list
    suspect_ranks: list
    summary: str
    action: Any
    seconds_since_progress: Any = None
    stack_files: dict = field(default_factory=dict)


@dataclass
class Attempt:
    number: int
    started: int  # rendezvous complete
    rendezvous_ms: float | None = None
    world_size: Any = None
    group_world_size: Any = None
    workers_started: int = 0
    ended: int | None = None
    outcome: str = "RUNNING"
    failures: list[Failure] = field(default_factory=list)
    # From the local agent's goodput events: the first step's metadata, the attempt's split.
    first_step: dict[str, Any] | None = None
    goodput: dict[str, Any] | None = None


@dataclass
class RunSummary:
    run_id: Any = None
    role: Any = None
    hostname: Any = None
    entry_point: Any = None
    max_restarts: Any = None
    started: int | None = None
    ended: int | None = None
    outcome: str = "UNKNOWN"
    endpoint_url: Any = None
    attempts: list[Attempt] = field(default_factory=list)
    restarts: list[Restart] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    stalls: list[Stall] = field(default_factory=list)
    rendezvous_ms: list[float] = field(default_factory=list)
    events: list[LogEvent] = field(default_factory=list)
    # The job's root cause as the agent last named it (rank, host, error), when a failure did.
    root_cause: dict[str, Any] | None = None
    # The run's goodput split from its run_end event (the local agent's), None without one.
    goodput: dict[str, Any] | None = None
    # Lines of the file that were not events; the log's count is kept on its last run, since
    # a cut-short or corrupted line cannot be attributed to a run. Not part of the JSON run.
    skipped_lines: int = 0

    @property
    def duration_s(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return (self.ended - self.started) / 1000


@dataclass
class JobTimeline:
    """One job seen from several event logs (one per node): each node's run, and the failures
    that started it all, first."""

    run_id: Any
    paths: list[str]
    runs: list[RunSummary]
    root_causes: list[Failure] = field(default_factory=list)
