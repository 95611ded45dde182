"""Wiring the local agent's workers' log files to the console: which files to follow, with
which prefix, and which lines also go to the filtered copies (torch's ``--duplicate-*``
filters)."""

from __future__ import annotations

import sys
from string import Template
from typing import Any

from agent.processes import LogTee, TeeRoute

__all__ = ["log_tee_for", "log_prefix"]


def log_tee_for(worker_group: Any, logs: Any, prefix_template: str | None) -> LogTee:
    """A (not yet started) tee for the files ``logs`` (torch's ``LogsDest``) marks as tee'd.

    Lines go to the agent's console, prefixed; lines that match the spec's duplicate filters
    also go to the filtered files, which the tee owns and closes when it stops.
    """
    spec = worker_group.spec
    prefixes = {w.local_rank: log_prefix(prefix_template, spec.role, w) for w in worker_group.workers}
    filtered = []
    routes = []
    for tee_files, console, filters, filtered_path in (
        (logs.tee_stdouts, sys.stdout, spec.duplicate_stdout_filters, logs.filtered_stdout),
        (logs.tee_stderrs, sys.stderr, spec.duplicate_stderr_filters, logs.filtered_stderr),
    ):
        outputs: list = [(console, None)]
        if filters and tee_files:
            copy = open(filtered_path, "w", errors="replace", buffering=1)  # noqa: SIM115 - the tee closes it
            filtered.append(copy)
            outputs.append((copy, lambda line, needles=tuple(filters): any(n in line for n in needles)))
        for local_rank, path in tee_files.items():
            routes.append(TeeRoute(path, prefixes[local_rank], outputs))
    return LogTee(routes, closes=filtered)


def log_prefix(template: str | None, role: str, worker: Any) -> str:
    """A tee'd line's prefix: ``template`` with ``${role_name}``, ``${rank}`` and
    ``${local_rank}`` substituted, ``[<role><local_rank>]:`` without one."""
    if template is None:
        return f"[{role}{worker.local_rank}]:"
    return Template(template).safe_substitute(
        role_name=role, rank=worker.global_rank, local_rank=worker.local_rank
    )
