"""Reading an event log back: what happened in a run, in the order it happened, and a summary.

This is ``elastiscope events``: for the person on call, a run's attempts, restarts and why,
failures with rank, exit code and the first line of the error, and how long rendezvous and
restarts took. It reads the JSON Lines event log (torch's ``Event`` JSON, one per line) and
nothing else, so it works on a log copied off a dead machine.

A log may hold several runs (one file given as ``--event-log`` to many runs): each
``elastiscope.agent.run_start`` begins a new one. Lines that are not events are counted and
skipped, so a log cut short by a crash still reads.

Several logs of one job (one per node, or a folder holding them) merge into one job timeline,
root cause first (``merge``).

``model`` holds the dataclasses, ``reading`` the file and the cut into runs, ``summary`` what
each run amounts to, ``merge`` the logs of a job's nodes, ``rendering`` the text and JSON shown.
"""

from __future__ import annotations

from telemetry.timeline.merge import log_paths, read_jobs, root_causes
from telemetry.timeline.model import (
    Attempt,
    Failure,
    JobTimeline,
    LogEvent,
    Restart,
    RunSummary,
    TimelineError,
)
from telemetry.timeline.reading import read_events, read_runs, resolve_log_path
from telemetry.timeline.rendering import jobs_as_json, render, render_jobs, summaries_as_json
from telemetry.timeline.summary import first_error_line, summarise

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
    "first_error_line",
    "render",
    "summaries_as_json",
    "JobTimeline",
    "log_paths",
    "read_jobs",
    "root_causes",
    "render_jobs",
    "jobs_as_json",
]
