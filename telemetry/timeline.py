"""Reading an event log back: what happened in a run, in the order it happened, and a summary.

This is ``elastiscope events``: for the person on call, a run's attempts, restarts and why,
failures with rank, exit code and the first line of the error, and how long rendezvous and
restarts took. It reads the JSON Lines event log (torch's ``Event`` JSON, one per line) and
nothing else, so it works on a log copied off a dead machine.

A log may hold several runs (one file given as ``--event-log`` to many runs): each
``elastiscope.agent.run_start`` begins a new one. Lines that are not events are counted and
skipped, so a log cut short by a crash still reads.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

__all__ = [
    "TimelineError",
    "LogEvent",
    "Failure",
    "Restart",
    "Attempt",
    "RunSummary",
    "resolve_log_path",
    "read_events",
    "read_runs",
    "summarise",
    "render",
    "summaries_as_json",
]

RUN_START = "elastiscope.agent.run_start"
RUN_END = "elastiscope.agent.run_end"
RESTART = "elastiscope.agent.restart"
RDZV_COMPLETE = "elastiscope.rendezvous.complete"
STATE_CHANGE = "elastiscope.agent.state_change"
WORKER_FAILED = "elastiscope.worker.failed"
ENDPOINT_STARTED = "elastiscope.endpoint.started"
TORCH_STATUS = "torchelastic.worker.status."


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
    rendezvous_ms: list[float] = field(default_factory=list)
    events: list[LogEvent] = field(default_factory=list)

    @property
    def duration_s(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return (self.ended - self.started) / 1000


# ---- reading ---------------------------------------------------------------------------------


def resolve_log_path(path: str) -> str:
    """``path`` itself if it is a file; the newest ``*.jsonl`` in it if it is a directory."""
    if os.path.isdir(path):
        logs = [os.path.join(path, f) for f in os.listdir(path) if f.endswith(".jsonl")]
        logs = [p for p in logs if os.path.isfile(p)]
        if not logs:
            raise TimelineError(f"no *.jsonl event log in directory {path}")
        return max(logs, key=os.path.getmtime)
    if not os.path.exists(path):
        raise TimelineError(f"event log not found: {path}")
    return path


def read_events(path: str) -> tuple[list[LogEvent], int]:
    """The log's events in file order, and how many lines were not events."""
    events, skipped = [], 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                event = _parse_line(line)
                if event is None:
                    skipped += 1
                else:
                    events.append(event)
    except OSError as e:
        raise TimelineError(f"cannot read event log {path}: {e.strerror or e}") from None
    return events, skipped


def _parse_line(line: str) -> LogEvent | None:
    try:
        raw = json.loads(line)
        name = raw["name"]
        metadata = raw.get("metadata") or {}
        if not isinstance(name, str) or not isinstance(metadata, dict):
            return None
        return LogEvent(name, str(raw.get("source", "")), int(raw.get("timestamp") or 0), metadata)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _split_runs(events: list[LogEvent]) -> list[list[LogEvent]]:
    """One list per run. Events before a run_start (the endpoint's) belong to the run it starts;
    events after a run_end with that run's id (the launcher's final record) to the run it ended."""
    runs: list[list[LogEvent]] = []
    current: list[LogEvent] | None = None
    pending: list[LogEvent] = []
    ended_run_id: Any = None
    for event in events:
        if event.name == RUN_START:
            current = pending + [event]
            pending = []
            runs.append(current)
            ended_run_id = None
        elif current is not None and ended_run_id is None:
            current.append(event)
            if event.name == RUN_END:
                ended_run_id = event.metadata.get("run_id")
        elif (current is not None and event.name != ENDPOINT_STARTED
              and event.metadata.get("run_id") == ended_run_id):
            current.append(event)
        else:
            pending.append(event)
    if pending:
        if runs and not any(e.name == RUN_START for e in pending) and ended_run_id is None:
            runs[-1].extend(pending)
        else:
            runs.append(pending)
    return runs


def read_runs(path: str) -> list[RunSummary]:
    events, skipped = read_events(path)
    if not events:
        raise TimelineError(
            f"no events in {path}" + (f" ({skipped} unreadable line(s))" if skipped else "")
        )
    runs = [summarise(chunk) for chunk in _split_runs(events)]
    runs[-1].skipped_lines = skipped  # type: ignore[attr-defined]
    return runs


# ---- summarising -----------------------------------------------------------------------------


def first_error_line(metadata: dict[str, Any]) -> str:
    """The first meaningful line of a failure: the error message, else what the error file holds."""
    message = metadata.get("error_message")
    if not message:
        message = _message_from_raw_error(metadata.get("raw_error"))
    for line in str(message or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def _message_from_raw_error(raw: Any) -> str:
    if not raw:
        return ""
    data: Any = raw
    if isinstance(raw, str):
        try:
            data = json.loads(raw)
        except ValueError:
            lines = [line for line in raw.splitlines() if line.strip()]
            return lines[-1] if lines else ""  # a traceback: its last line names the error
    if isinstance(data, dict):
        message = data.get("message", data)
        if isinstance(message, dict):
            message = message.get("message", "")
        return str(message)
    return str(data)


def summarise(events: Iterable[LogEvent]) -> RunSummary:
    run = RunSummary()
    attempt: Attempt | None = None
    pending_rendezvous: list[float] = []
    open_restart: Restart | None = None
    final_failures: list[Failure] = []

    for e in events:
        md = e.metadata
        run.events.append(e)
        for key in ("run_id", "role", "hostname"):
            if getattr(run, key) is None and md.get(key) is not None:
                setattr(run, key, md.get(key))
        if run.started is None and e.timestamp:
            run.started = e.timestamp
        if e.timestamp:
            run.ended = max(run.ended or 0, e.timestamp)

        if e.name == RUN_START:
            run.started = e.timestamp
            run.entry_point = md.get("program") or md.get("entry_point")
            run.max_restarts = md.get("max_restarts")
        elif e.name == ENDPOINT_STARTED:
            run.endpoint_url = md.get("url")
        elif e.name == TORCH_STATUS + "RENDEZVOUS" and md.get("duration_ms") is not None:
            pending_rendezvous.append(float(md["duration_ms"]))
            run.rendezvous_ms.append(float(md["duration_ms"]))
        elif e.name == RDZV_COMPLETE:
            if attempt is not None and attempt.ended is None:
                attempt.ended, attempt.outcome = e.timestamp, "restarted"
            attempt = Attempt(
                number=len(run.attempts), started=e.timestamp,
                rendezvous_ms=pending_rendezvous.pop(0) if pending_rendezvous else None,
                world_size=md.get("world_size"), group_world_size=md.get("group_world_size"),
            )
            run.attempts.append(attempt)
        elif e.name == TORCH_STATUS + "START" and attempt is not None:
            attempt.workers_started += 1
        elif e.name == WORKER_FAILED:
            failure = _failure(e, attempt)
            run.failures.append(failure)
            if attempt is not None:
                attempt.failures.append(failure)
        elif e.name == TORCH_STATUS + "FAILED" and e.source == "WORKER":
            final_failures.append(_failure(e, attempt))
        elif e.name == RESTART:
            open_restart = Restart(
                timestamp=e.timestamp, number=len(run.restarts) + 1,
                reason=str(md.get("reason") or "unknown"),
                failed_ranks=_json_list(md.get("failed_ranks")),
                remaining_restarts=md.get("remaining_restarts"),
            )
            run.restarts.append(open_restart)
            if attempt is not None and attempt.ended is None:
                attempt.ended, attempt.outcome = e.timestamp, f"restart ({open_restart.reason})"
        elif e.name == STATE_CHANGE and md.get("state") == "HEALTHY" and open_restart is not None:
            open_restart.duration_ms = float(e.timestamp - open_restart.timestamp)
            open_restart = None
        elif e.name == RUN_END:
            run.outcome = str(md.get("state") or "UNKNOWN")
            run.ended = e.timestamp
            if attempt is not None and attempt.ended is None:
                attempt.ended, attempt.outcome = e.timestamp, run.outcome

    # torch's end-of-run FAILED events repeat the last attempt's failures; keep them only for
    # logs without live failure events (a torch agent's log, say).
    live = {(f.attempt, f.global_rank) for f in run.failures}
    for f in final_failures:
        if (f.attempt, f.global_rank) not in live:
            run.failures.append(f)
            if 0 <= f.attempt < len(run.attempts):
                run.attempts[f.attempt].failures.append(f)
    if run.outcome == "UNKNOWN" and run.attempts:
        run.outcome = "INCOMPLETE (no run_end: agent killed, or still running)"
    return run


def _failure(e: LogEvent, attempt: Attempt | None) -> Failure:
    md = e.metadata
    local_rank = md.get("local_rank")
    if local_rank is None:  # torch's events nest it in a JSON string, as a one-element list
        nested = md.get("metadata")
        try:
            value = json.loads(nested).get("local_rank") if isinstance(nested, str) else None
        except (ValueError, AttributeError):
            value = None
        local_rank = value[0] if isinstance(value, list) and value else value
    return Failure(
        timestamp=e.timestamp,
        attempt=attempt.number if attempt is not None else -1,
        global_rank=md.get("global_rank"),
        local_rank=local_rank,
        exit_code=md.get("exit_code", md.get("exitcode")),
        signal=md.get("signal") or md.get("exit_signal"),
        pid=md.get("worker_pid") or md.get("worker_id"),
        error=first_error_line(md),
        detect_latency_ms=md.get("detect_latency_ms"),
    )


def _json_list(value: Any) -> list:
    if isinstance(value, list):
        return value
    try:
        parsed = json.loads(value) if isinstance(value, str) else []
    except ValueError:
        return [value]
    return parsed if isinstance(parsed, list) else [parsed]


# ---- rendering -------------------------------------------------------------------------------


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def _ms(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def _rank(f: Failure) -> str:
    local = f" (local {f.local_rank})" if f.local_rank is not None else ""
    return f"rank {f.global_rank}{local}"


def _exit(f: Failure) -> str:
    if f.signal:
        return f"signal {f.signal}"
    return f"exit code {f.exit_code}" if f.exit_code is not None else "exit code unknown"


def _timeline_lines(run: RunSummary, show_all: bool) -> list[tuple[int, str]]:
    """(timestamp, text) for each line of the timeline."""
    lines: list[tuple[int, str]] = []
    restarts = iter(run.restarts)
    attempts = iter(run.attempts)
    for e in run.events:
        md = e.metadata
        text = None
        if e.name == RUN_START:
            program = md.get("program") or md.get("entry_point")
            text = (f"run started: {program}, {md.get('local_world_size')} worker(s) "
                    f"on this node, max {md.get('max_restarts')} restart(s)")
        elif e.name == ENDPOINT_STARTED:
            text = f"endpoint at {md.get('url')}"
        elif e.name == RDZV_COMPLETE:
            a = next(attempts, None)
            took = f" in {_ms(a.rendezvous_ms)}" if a and a.rendezvous_ms is not None else ""
            text = (f"attempt {a.number if a else '?'}: rendezvous complete{took}: "
                    f"{md.get('group_world_size')} node(s), world size {md.get('world_size')}")
        elif e.name == WORKER_FAILED or (e.name == TORCH_STATUS + "FAILED" and e.source == "WORKER"
                                         and show_all):
            f = _failure(e, None)
            latency = (f" (seen in {_ms(f.detect_latency_ms)})"
                       if f.detect_latency_ms is not None else "")
            text = f"FAILED {_rank(f)}, {_exit(f)}: {f.error or 'no error message'}{latency}"
        elif e.name == RESTART:
            r = next(restarts, None)
            took = (f", healthy again after {_ms(r.duration_ms)}"
                    if r and r.duration_ms is not None else "")
            ranks = f" of rank(s) {', '.join(map(str, r.failed_ranks))}" if r and r.failed_ranks else ""
            text = (f"restart #{r.number if r else '?'} ({md.get('reason')}{ranks}); "
                    f"{md.get('remaining_restarts')} left{took}")
        elif e.name == RUN_END:
            text = f"run ended: {md.get('state')} after {md.get('total_run_time')} s"
        elif show_all:
            extras = {k: v for k, v in md.items()
                      if k in ("state", "global_rank", "duration_ms", "reason") and v is not None}
            text = f"{e.name} " + " ".join(f"{k}={v}" for k, v in extras.items())
        if text is not None:
            lines.append((e.timestamp, text))
    return lines


def render(runs: list[RunSummary], path: str, show_all: bool = False) -> str:
    out: list[str] = [f"event log {path}"]
    for run in runs:
        out.append("")
        duration = f" in {run.duration_s:.1f} s" if run.duration_s is not None else ""
        out.append(f"run {run.run_id}  role {run.role}  host {run.hostname}: {run.outcome}{duration}")
        lines = _timeline_lines(run, show_all)
        origin = min((ts for ts, _ in lines if ts), default=0)
        for ts, text in lines:
            offset = f"+{(ts - origin) / 1000:.3f}s" if ts and origin else ""
            out.append(f"  {_clock(ts)} {offset:>10}  {text}")
        out.append("  summary:")
        out.extend("    " + line for line in _summary_lines(run))
    skipped = getattr(runs[-1], "skipped_lines", 0) if runs else 0
    if skipped:
        out.append(f"\n({skipped} line(s) of the log were not events and were skipped)")
    return "\n".join(out)


def _summary_lines(run: RunSummary) -> list[str]:
    reasons: dict[str, int] = {}
    for r in run.restarts:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
    lines = [
        f"outcome: {run.outcome}",
        f"attempts: {len(run.attempts)}   restarts: {len(run.restarts)}"
        + (f" ({why})" if why else "")
        + (f"   max restarts: {run.max_restarts}" if run.max_restarts is not None else ""),
    ]
    if run.failures:
        lines.append(f"failures: {len(run.failures)}")
        for f in run.failures:
            lines.append(f"  attempt {f.attempt}: {_rank(f)}, {_exit(f)}: "
                         f"{f.error or 'no error message'}")
    else:
        lines.append("failures: none")
    if run.rendezvous_ms:
        r = run.rendezvous_ms
        lines.append(f"rendezvous: {len(r)} round(s), mean {_ms(sum(r) / len(r))}, max {_ms(max(r))}")
    timed = [x.duration_ms for x in run.restarts if x.duration_ms is not None]
    if timed:
        lines.append(f"restart to healthy: mean {_ms(sum(timed) / len(timed))}, max {_ms(max(timed))}")
    if run.endpoint_url:
        lines.append(f"endpoint: {run.endpoint_url}")
    return lines


def summaries_as_json(runs: list[RunSummary], path: str) -> dict[str, Any]:
    def one(run: RunSummary) -> dict[str, Any]:
        data = asdict(run)
        data.pop("events")
        data["duration_s"] = run.duration_s
        data["restart_count"] = len(run.restarts)
        data["attempt_count"] = len(run.attempts)
        data["failure_count"] = len(run.failures)
        data["event_count"] = len(run.events)
        return data

    return {
        "path": path,
        "skipped_lines": getattr(runs[-1], "skipped_lines", 0) if runs else 0,
        "runs": [one(run) for run in runs],
    }
