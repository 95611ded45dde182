"""What ``elastiscope`` tells the person running it, apart from errors: status lines on stderr.

stdout belongs to the workers (their output is passed through), so our own lines go to stderr.
They follow the agent's log format: on a terminal (console) each is plain text prefixed with the
program name, so it stands out among the workers' lines; off a terminal (``--log-format json``,
or ``auto`` into a pipe or a batch system's log) each is one JSON object like every other line of
ours, with the line's facts as fields, so a log collector never sees a mix of both.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["PROG", "say", "say_block"]

PROG = "elastiscope"
# The logger tree telemetry.logs renders; status lines are records of their own logger in it.
STATUS_LOGGER = "elastiscope.cli"


def _json_lines() -> bool:
    # Imported here, not at the top: a --run-path worker imports this package and must not
    # load telemetry for it.
    from telemetry.logs import active_format

    return active_format() == "json"


def say(message: str, **fields: Any) -> None:
    """One status line: ``elastiscope: message`` on a console, a JSON record (with ``fields``)
    when the agent logs JSON."""
    if _json_lines():
        logging.getLogger(STATUS_LOGGER).info(message, extra=fields)
    else:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def say_block(text: str, **fields: Any) -> None:
    """Several lines meant to be read together (torchrun's failure report): as they are on a
    console, one JSON record off a terminal."""
    if _json_lines():
        logging.getLogger(STATUS_LOGGER).error(text, extra=fields)
    else:
        print(text, file=sys.stderr, flush=True)
