"""``elastiscope events``: a run's timeline and summary, read back from its event log."""

from __future__ import annotations

import json
from typing import Sequence

from agent.cli.arguments import build_events_parser
from agent.cli.errors import EXIT_OK, UsageError
from telemetry import timeline

__all__ = ["events_command"]


def events_command(argv: Sequence[str]) -> int:
    args = build_events_parser().parse_args(list(argv))
    try:
        path = timeline.resolve_log_path(args.path)
        runs = timeline.read_runs(path)
    except timeline.TimelineError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(timeline.summaries_as_json(runs, path), indent=2))
    else:
        print(timeline.render(runs, path, show_all=args.all))
    return EXIT_OK
