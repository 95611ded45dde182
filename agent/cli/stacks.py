"""``elastiscope stacks``: every worker's Python stack of a running job, now, without stopping it.

It asks the run's endpoint (``/stacks``): given a URL, that one; given an event log (or a
directory of them, ``./runs`` by default), the endpoint its newest run announced
(``elastiscope.endpoint.started``). The agent reads the stacks (py-spy, else each worker's
faulthandler dump) in a bounded time and says where each rank is.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Sequence

from agent.cli.arguments import DEFAULT_RUNS_DIR, build_stacks_parser
from agent.cli.errors import EXIT_FAILED, EXIT_OK, UsageError
from agent.cli.messages import say
from telemetry import timeline
from telemetry.names import ENDPOINT_STARTED

__all__ = ["stacks_command"]

REQUEST_TIMEOUT_S = 30.0  # the agent's capture is bounded well below this


def stacks_command(argv: Sequence[str]) -> int:
    args = build_stacks_parser().parse_args(list(argv))
    target = args.target or DEFAULT_RUNS_DIR
    url = target.rstrip("/") if target.startswith(("http://", "https://")) else _endpoint_of(target)
    request = urllib.request.Request(url + "/stacks")
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            dump = json.loads(response.read())
    except urllib.error.HTTPError as e:
        say(f"error: {url}/stacks answered {e.code}: {_detail(e)}")
        return EXIT_FAILED
    except (OSError, ValueError) as e:
        say(f"error: cannot read {url}/stacks ({getattr(e, 'reason', e)}): is the job still running?")
        return EXIT_FAILED
    print(json.dumps(dump, indent=2) if args.json else render(dump))
    return EXIT_OK


def _endpoint_of(path: str) -> str:
    """The endpoint the newest run of the log at ``path`` announced."""
    try:
        runs = timeline.read_runs(timeline.resolve_log_path(path))
    except timeline.TimelineError as e:
        raise UsageError(str(e)) from None
    for run in reversed(runs):
        for event in reversed(run.events):
            if event.name == ENDPOINT_STARTED and event.metadata.get("url"):
                return str(event.metadata["url"]).rstrip("/")
    raise UsageError(f"{path}: no endpoint announced in its newest run (was it started with "
                     "--metrics-port off?); give the endpoint's URL instead")


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read()).get("detail"))
    except (ValueError, AttributeError, OSError):
        return error.reason


def render(dump: dict[str, Any]) -> str:
    """The dump for a person: the summary, then each rank's stack."""
    lines = [f"{len(dump.get('ranks', []))} worker(s), read in {dump.get('capture_ms')} ms",
             f"suspects: {', '.join(map(str, dump.get('suspects') or [])) or 'none'}",
             dump.get("summary") or ""]
    for rank in dump.get("ranks", []):
        since = rank.get("seconds_since_progress")
        progress = f", {since:.1f} s since its last progress" if since is not None else ""
        lines.append("")
        lines.append(f"rank {rank['rank']} (local {rank['local_rank']}, pid {rank['pid']}): "
                     f"{rank['where']}{' ' + rank['detail'] if rank.get('detail') else ''}"
                     f"{' at ' + rank['code'] if rank.get('code') else ''}{progress}"
                     f" [read by {rank.get('method') or 'nothing'}]")
        if rank.get("note"):
            lines.append(f"  {rank['note']}")
        lines.extend("  " + line for line in (rank.get("stack") or "").rstrip().splitlines())
    return "\n".join(lines)
