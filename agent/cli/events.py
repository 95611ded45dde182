"""``elastiscope events``: a run's timeline and summary, read back from its event log; with the
logs of several nodes (several paths, or a directory holding them), one job timeline, root cause
first."""

from __future__ import annotations

import json
import os
from typing import Sequence

from agent.cli.arguments import DEFAULT_RUNS_DIR, build_events_parser
from agent.cli.errors import EXIT_OK, UsageError
from telemetry import timeline

__all__ = ["events_command"]


def events_command(argv: Sequence[str]) -> int:
    args = build_events_parser().parse_args(list(argv))
    paths = args.paths or [DEFAULT_RUNS_DIR]
    try:
        if len(paths) == 1:
            jobs, path = _one_path(paths[0])
        else:
            jobs, path = timeline.read_jobs(paths), None
    except timeline.TimelineError as e:
        raise UsageError(str(e)) from None
    if path is not None:  # one log of one node: that log's runs, as they are
        runs = timeline.read_runs(path)
        if args.json:
            print(json.dumps(timeline.summaries_as_json(runs, path), indent=2))
        else:
            print(timeline.render(runs, path, show_all=args.all))
    elif args.json:
        print(json.dumps(timeline.jobs_as_json(jobs), indent=2))
    else:
        print(timeline.render_jobs(jobs, show_all=args.all))
    return EXIT_OK


def _one_path(path: str) -> tuple[list, str | None]:
    """A file: itself. A directory: its newest log, merged with the directory's other logs of
    the same job (other nodes) when there are any."""
    newest = timeline.resolve_log_path(path)
    if not os.path.isdir(path):
        return [], newest
    run_id = timeline.read_runs(newest)[-1].run_id
    job = next(j for j in timeline.read_jobs([path]) if j.run_id == run_id)
    if len(job.paths) == 1:
        return [], newest
    return [job], None
