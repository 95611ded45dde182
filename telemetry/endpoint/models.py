"""The endpoint's response models: what /status, /healthz, /readyz and /events promise.

Imports pydantic, so only the app builder imports this module (when an endpoint is built), never
``import telemetry``: a job that never answers a request never loads the web stack.
"""

# No ``from __future__ import annotations``: pydantic evaluates these annotations, and the plain
# form keeps them exactly as the OpenAPI schema has always shown them.
from typing import Literal, Optional, Union

from pydantic import BaseModel, Field

from telemetry.names import AGENT, WORKER, WORKER_STATES

__all__ = [
    "WorkerProgress", "WorkerStatus", "Status", "Health", "Readiness", "EventRecord", "EventPage", "Problem",
    "RankStack", "StackDump", "Peer",
]

State = Literal[WORKER_STATES]  # type: ignore[valid-type]
Source = Literal[AGENT, WORKER]  # type: ignore[valid-type]
MetadataValue = Union[str, int, float, bool, None]


class WorkerProgress(BaseModel):
    """A worker's training progress, read from its progress record."""

    reporting: bool = Field(..., description="false: the worker has not reported progress "
                            "(no optimizer step, no explicit report), which is not a stall")
    steps: Optional[int] = Field(None, description="steps of the current attempt")
    global_step: Optional[int] = Field(None, description="the training's global step, if known")
    last_step_time: Optional[float] = Field(None, description="end of the last step, seconds since the epoch")
    last_step_duration: Optional[float] = Field(None, description="seconds between the last two step ends")


class WorkerStatus(BaseModel):
    """One local worker process."""

    local_rank: int
    global_rank: Optional[int] = Field(None, description="-1 or null before rank assignment")
    role_rank: Optional[int] = None
    pid: Optional[int] = Field(None, description="null while the worker is not running")
    state: State = "UNKNOWN"
    start_time: Optional[float] = Field(None, description="seconds since the epoch")
    exit_code: Optional[int] = Field(None, description="null while the worker runs")
    cpu_seconds: Optional[float] = Field(None, description="user + system CPU time")
    rss_bytes: Optional[int] = Field(None, description="resident memory")
    progress: Optional[WorkerProgress] = Field(None, description="null where the agent reads no progress")
    # Issue 16 (the live page): the marks the agent's detectors hold now; null where unknown.
    straggler: Optional[bool] = Field(None, description="flagged as a straggler now (agent/stragglers.py)")
    stalled: Optional[bool] = Field(None, description="found stalled now, not progressed since (agent/stalls.py)")


class Peer(BaseModel):
    """Another agent of the job and its page, as it published them in the rendezvous store."""

    group_rank: int
    hostname: Optional[str] = None
    url: str = Field(..., description="http://host:port of that agent's endpoint")


class Status(BaseModel):
    """The agent and its worker group right now."""

    run_id: Optional[str] = None
    role: Optional[str] = None
    state: State = Field(..., description="the worker group's state")
    restarts_used: int = 0
    remaining_restarts: Optional[int] = None
    max_restarts: Optional[int] = None
    group_rank: Optional[int] = Field(None, description="this node's rank among the agents")
    group_world_size: Optional[int] = Field(None, description="number of agents (nodes)")
    world_size: Optional[int] = Field(None, description="number of workers over all nodes")
    workers: list[WorkerStatus] = Field(default_factory=list)
    # Issue 16 (the live page): optional, null where the agent does not know them.
    hostname: Optional[str] = Field(None, description="this node's fully qualified host name")
    time: Optional[float] = Field(None, description="the agent's clock when answering, seconds "
                                  "since the epoch (ages are measured against it)")
    event_log: Optional[str] = Field(None, description="path of this agent's event log on its host")
    goodput_ratio: Optional[float] = Field(None, description="productive share of the run's wall "
                                           "time so far (agent/goodput.py); null before any progress")
    peers: Optional[list[Peer]] = Field(None, description="the pages of the job's other agents, "
                                        "as they published them this attempt")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    uptime_seconds: float


class Readiness(BaseModel):
    ready: bool
    state: State


class EventRecord(BaseModel):
    """One event in torch's event format, with its position in the ring buffer."""

    seq: int = Field(..., description="increasing sequence number; pass as since= to page")
    name: str
    source: Source
    timestamp: int = Field(..., description="milliseconds since the epoch")
    metadata: dict[str, MetadataValue]


class EventPage(BaseModel):
    events: list[EventRecord]
    last_seq: int = Field(..., description="sequence number of the newest event held")


class RankStack(BaseModel):
    """One worker's Python stack and where it is (docs/reference.md: the stalled event's ranks)."""

    rank: int = Field(..., description="global rank")
    local_rank: int
    pid: int
    where: str = Field(..., description="collective, data_loading, user_code, not_responding, exited, unknown")
    detail: str = ""
    code: Optional[str] = Field(None, description="file:line of the script's own innermost frame")
    function: Optional[str] = None
    method: Optional[str] = Field(None, description="py-spy, faulthandler, or null: no stack read")
    note: Optional[str] = None
    seconds_since_progress: Optional[float] = None
    last_progress_time: Optional[float] = None
    stack: Optional[str] = Field(None, description="the dump as read, every thread")


class StackDump(BaseModel):
    """Every running local worker's stack, read without stopping anyone."""

    taken_at: float = Field(..., description="seconds since the epoch")
    capture_ms: float
    suspects: list[int] = Field(default_factory=list, description="ranks the others wait for")
    summary: str = ""
    ranks: list[RankStack] = Field(default_factory=list)


class Problem(BaseModel):
    detail: str

