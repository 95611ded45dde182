"""Reading an event log file: its events in file order, cut into one list per run."""

from __future__ import annotations

import json
import os
from typing import Any

from telemetry.names import ENDPOINT_STARTED, RUN_END, RUN_START
from telemetry.timeline.model import LogEvent, RunSummary, TimelineError
from telemetry.timeline.summary import summarise

__all__ = ["resolve_log_path", "read_events", "split_runs", "read_runs"]


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


def split_runs(events: list[LogEvent]) -> list[list[LogEvent]]:
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
    """A summary of every run the log holds, in file order."""
    events, skipped = read_events(path)
    if not events:
        raise TimelineError(
            f"no events in {path}" + (f" ({skipped} unreadable line(s))" if skipped else "")
        )
    runs = [summarise(chunk) for chunk in split_runs(events)]
    runs[-1].skipped_lines = skipped
    return runs
