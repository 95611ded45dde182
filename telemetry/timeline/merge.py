"""Several event logs of one job (one per node) into one job timeline, root cause first.

The logs are grouped by run id: the runs of one id are one job seen from its nodes. The root
cause of each failed attempt is the failure the agents marked as such (they agreed on it
through the rendezvous store); in a log without those marks, the earliest failure.
"""

from __future__ import annotations

import os

from telemetry.timeline.model import Failure, JobTimeline, RunSummary, TimelineError
from telemetry.timeline.reading import read_runs

__all__ = ["log_paths", "read_jobs", "root_causes"]


def log_paths(paths: list[str]) -> list[str]:
    """Each given file, and every ``*.jsonl`` of each given directory, in name order."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            logs = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".jsonl"))
            logs = [p for p in logs if os.path.isfile(p)]
            if not logs:
                raise TimelineError(f"no *.jsonl event log in directory {path}")
            found.extend(logs)
        elif os.path.exists(path):
            found.append(path)
        else:
            raise TimelineError(f"event log not found: {path}")
    return list(dict.fromkeys(found))


def root_causes(failures: list[Failure]) -> list[Failure]:
    """The failures that started it all: those marked as root cause (one per rank and attempt
    as each node saw it), else the earliest one."""
    marked = [f for f in failures if f.root_cause]
    if marked:
        unique = {(f.global_rank, round(f.exited_at)): f for f in marked}
        return sorted(unique.values(), key=lambda f: f.exited_at)
    if not failures:
        return []
    return [min(failures, key=lambda f: (f.exited_at, str(f.global_rank)))]


def read_jobs(paths: list[str]) -> list[JobTimeline]:
    """One JobTimeline per run id found in the logs, in the order first seen."""
    jobs: dict[object, JobTimeline] = {}
    for path in log_paths(paths):
        for run in read_runs(path):
            job = jobs.setdefault(run.run_id, JobTimeline(run.run_id, [], []))
            job.runs.append(run)
            if path not in job.paths:
                job.paths.append(path)
    for job in jobs.values():
        job.runs.sort(key=_node_order)
        job.root_causes = root_causes([f for run in job.runs for f in run.failures])
    return list(jobs.values())


def _node_order(run: RunSummary) -> tuple:
    group_rank = next((e.metadata.get("group_rank") for e in run.events
                       if e.metadata.get("group_rank") is not None), None)
    return (group_rank if isinstance(group_rank, int) else 1 << 30, str(run.hostname), run.started or 0)
