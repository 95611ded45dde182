"""Summarising one run's events: its attempts, restarts and why, failures, and durations."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

from telemetry.names import (
    ATTEMPT_GOODPUT,
    ENDPOINT_STARTED,
    FIRST_STEP,
    HEALTHY,
    RENDEZVOUS_COMPLETE,
    RESTART,
    RUN_END,
    RUN_START,
    STATE_CHANGE,
    TORCH_FAILED,
    TORCH_RENDEZVOUS,
    TORCH_START,
    WORKER,
    WORKER_FAILED,
    WORKER_STALLED,
)
from telemetry.timeline.model import Attempt, Failure, LogEvent, Restart, RunSummary, Stall

__all__ = ["summarise", "failure_of", "first_error_line", "json_list", "goodput_of", "GOODPUT_KEYS", "ATTEMPT_KEYS"]

INCOMPLETE = "INCOMPLETE (no run_end: agent killed, or still running)"


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


def failure_of(event: LogEvent, attempt: Attempt | None) -> Failure:
    """The failure a worker-failed event (ours or torch's) reports, in ``attempt`` if known."""
    md = event.metadata
    local_rank = md.get("local_rank")
    if local_rank is None:  # torch's events nest it in a JSON string, as a one-element list
        nested = md.get("metadata")
        try:
            value = json.loads(nested).get("local_rank") if isinstance(nested, str) else None
        except (ValueError, AttributeError):
            value = None
        local_rank = value[0] if isinstance(value, list) and value else value
    return Failure(
        timestamp=event.timestamp,
        attempt=attempt.number if attempt is not None else -1,
        global_rank=md.get("global_rank"),
        local_rank=local_rank,
        exit_code=md.get("exit_code", md.get("exitcode")),
        signal=md.get("signal") or md.get("exit_signal"),
        pid=md.get("worker_pid") or md.get("worker_id"),
        error=first_error_line(md),
        detect_latency_ms=md.get("detect_latency_ms"),
        hostname=md.get("hostname"),
        group_rank=md.get("group_rank"),
        stdout_log=md.get("stdout_log"),
        stderr_log=md.get("stderr_log"),
        root_cause=md.get("root_cause"),
        root_cause_rank=md.get("root_cause_rank"),
    )


# The goodput fields of attempt_goodput and run_end events (agent/goodput.py goodput_fields).
GOODPUT_KEYS = ("wall_seconds", "productive_seconds", "goodput_ratio", "progress_reported")
ATTEMPT_KEYS = ("attempt", "ended_by", "steps", "steps_per_second", "redone_steps")


def goodput_of(metadata: dict[str, Any], keys: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """An event's goodput fields (and ``keys``), None when it has none (not a local agent's)."""
    if "productive_seconds" not in metadata:
        return None
    return {k: v for k, v in metadata.items()
            if k in GOODPUT_KEYS or k in keys or (k.startswith("badput_") and k.endswith("_seconds"))}


def json_list(value: Any) -> list:
    """A list given as a list or as its JSON text (torch's metadata holds JSON strings)."""
    if isinstance(value, list):
        return value
    try:
        parsed = json.loads(value) if isinstance(value, str) else []
    except ValueError:
        return [value]
    return parsed if isinstance(parsed, list) else [parsed]


class _RunBuilder:
    """Folds one run's events, in order, into its RunSummary."""

    def __init__(self) -> None:
        self.run = RunSummary()
        self.attempt: Attempt | None = None  # the attempt under way
        self.pending_rendezvous: list[float] = []  # rounds timed but not yet completed
        self.open_restart: Restart | None = None  # restarted, not yet healthy again
        self.final_failures: list[Failure] = []  # torch's end-of-run FAILED events
        self.handlers: dict[str, Callable[[LogEvent], None]] = {
            RUN_START: self.on_run_start,
            ENDPOINT_STARTED: self.on_endpoint_started,
            TORCH_RENDEZVOUS: self.on_rendezvous_timed,
            RENDEZVOUS_COMPLETE: self.on_rendezvous_complete,
            TORCH_START: self.on_worker_started,
            WORKER_FAILED: self.on_worker_failed,
            TORCH_FAILED: self.on_torch_worker_failed,
            RESTART: self.on_restart,
            STATE_CHANGE: self.on_state_change,
            RUN_END: self.on_run_end,
            FIRST_STEP: self.on_first_step,
            ATTEMPT_GOODPUT: self.on_attempt_goodput,
            WORKER_STALLED: self.on_stalled,
        }

    def add(self, event: LogEvent) -> None:
        run, md = self.run, event.metadata
        run.events.append(event)
        for key in ("run_id", "role", "hostname"):
            if getattr(run, key) is None and md.get(key) is not None:
                setattr(run, key, md.get(key))
        if run.started is None and event.timestamp:
            run.started = event.timestamp
        if event.timestamp:
            run.ended = max(run.ended or 0, event.timestamp)
        if md.get("root_cause_rank") is not None:
            run.root_cause = {"rank": md.get("root_cause_rank"), "host": md.get("root_cause_host"),
                              "error": md.get("root_cause_error")}
        handler = self.handlers.get(event.name)
        if handler is not None:
            handler(event)

    def end_attempt(self, timestamp: int, outcome: str) -> None:
        if self.attempt is not None and self.attempt.ended is None:
            self.attempt.ended, self.attempt.outcome = timestamp, outcome

    def on_run_start(self, event: LogEvent) -> None:
        md = event.metadata
        self.run.started = event.timestamp
        self.run.entry_point = md.get("program") or md.get("entry_point")
        self.run.max_restarts = md.get("max_restarts")

    def on_endpoint_started(self, event: LogEvent) -> None:
        self.run.endpoint_url = event.metadata.get("url")

    def on_rendezvous_timed(self, event: LogEvent) -> None:
        duration = event.metadata.get("duration_ms")
        if duration is not None:
            self.pending_rendezvous.append(float(duration))
            self.run.rendezvous_ms.append(float(duration))

    def on_rendezvous_complete(self, event: LogEvent) -> None:
        md = event.metadata
        self.end_attempt(event.timestamp, "restarted")
        self.attempt = Attempt(
            number=len(self.run.attempts), started=event.timestamp,
            rendezvous_ms=self.pending_rendezvous.pop(0) if self.pending_rendezvous else None,
            world_size=md.get("world_size"), group_world_size=md.get("group_world_size"),
        )
        self.run.attempts.append(self.attempt)

    def on_worker_started(self, event: LogEvent) -> None:
        if self.attempt is not None:
            self.attempt.workers_started += 1

    def on_worker_failed(self, event: LogEvent) -> None:
        failure = failure_of(event, self.attempt)
        self.run.failures.append(failure)
        if self.attempt is not None:
            self.attempt.failures.append(failure)

    def on_torch_worker_failed(self, event: LogEvent) -> None:
        if event.source == WORKER:
            self.final_failures.append(failure_of(event, self.attempt))

    def on_restart(self, event: LogEvent) -> None:
        md = event.metadata
        self.open_restart = Restart(
            timestamp=event.timestamp, number=len(self.run.restarts) + 1,
            reason=str(md.get("reason") or "unknown"),
            failed_ranks=json_list(md.get("failed_ranks")),
            remaining_restarts=md.get("remaining_restarts"),
        )
        self.run.restarts.append(self.open_restart)
        self.end_attempt(event.timestamp, f"restart ({self.open_restart.reason})")

    def on_state_change(self, event: LogEvent) -> None:
        if event.metadata.get("state") == HEALTHY and self.open_restart is not None:
            self.open_restart.duration_ms = float(event.timestamp - self.open_restart.timestamp)
            self.open_restart = None

    def _numbered_attempt(self, event: LogEvent) -> Attempt | None:
        number = event.metadata.get("attempt")
        attempts = self.run.attempts
        return attempts[number] if isinstance(number, int) and 0 <= number < len(attempts) else None

    def on_first_step(self, event: LogEvent) -> None:
        attempt = self._numbered_attempt(event)
        if attempt is not None:
            attempt.first_step = dict(event.metadata)

    def on_attempt_goodput(self, event: LogEvent) -> None:
        attempt = self._numbered_attempt(event)
        if attempt is not None:
            attempt.goodput = goodput_of(event.metadata, ATTEMPT_KEYS)

    def on_stalled(self, event: LogEvent) -> None:
        md = event.metadata
        try:
            files = json.loads(md.get("stack_files") or "{}")
        except ValueError:
            files = {}
        self.run.stalls.append(Stall(
            timestamp=event.timestamp, attempt=self.attempt.number if self.attempt else -1,
            stalled_ranks=json_list(md.get("stalled_ranks")),
            suspect_ranks=json_list(md.get("suspect_ranks")),
            summary=str(md.get("summary") or ""), action=md.get("action"),
            seconds_since_progress=md.get("seconds_since_progress"),
            stack_files=files if isinstance(files, dict) else {},
        ))

    def on_run_end(self, event: LogEvent) -> None:
        self.run.goodput = goodput_of(event.metadata)
        self.run.outcome = str(event.metadata.get("state") or "UNKNOWN")
        self.run.ended = event.timestamp
        self.end_attempt(event.timestamp, self.run.outcome)

    def finish(self) -> RunSummary:
        run = self.run
        # torch's end-of-run FAILED events repeat the last attempt's failures; keep them only for
        # logs without live failure events (a torch agent's log, say).
        live = {(f.attempt, f.global_rank) for f in run.failures}
        for f in self.final_failures:
            if (f.attempt, f.global_rank) not in live:
                run.failures.append(f)
                if 0 <= f.attempt < len(run.attempts):
                    run.attempts[f.attempt].failures.append(f)
        if run.outcome == "UNKNOWN" and run.attempts:
            run.outcome = INCOMPLETE
        return run


def summarise(events: Iterable[LogEvent]) -> RunSummary:
    """The summary of one run's events, given in the order they happened."""
    builder = _RunBuilder()
    for event in events:
        builder.add(event)
    return builder.finish()
