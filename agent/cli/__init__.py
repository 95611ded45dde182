"""The ``elastiscope`` command: ``run`` (a drop-in for ``torchrun``), ``events`` (read a run's log)
and ``stacks`` (a running job's stacks).

``elastiscope run [torchrun flags] [observability flags] SCRIPT [ARGS]`` takes every flag of
torch 2.13's ``torchrun`` with the same meaning, defaults and ``PET_*`` environment variables,
plus its own flags (each also read from an ``ELASTISCOPE_*`` variable)::

    --metrics-host HOST      where the HTTP endpoint listens (127.0.0.1)
    --metrics-port PORT|off  its port; 0 picks a free one, off disables the endpoint (0)
    --metrics-linger SECS    if /metrics was scraped during the run, keep the endpoint up after
                             the job until the next scrape, at most this long (5); else no wait
    --event-log PATH|off     JSON Lines event log (default: ./runs/<time>-<run id>.jsonl)
    --otlp-endpoint URL      OpenTelemetry traces and logs over OTLP/HTTP
    --pushgateway URL        push the final metrics to a Prometheus pushgateway
    --log-format FMT         auto | json | console
    --token TOKEN            bearer token the endpoint requires (all routes but the probes)
    --no-token-required      allow a non-loopback --metrics-host without a token
    --no-progress            do not count each optimizer.step() as a training step
    --no-warm-standby        start every attempt's workers cold (no interpreters kept ready)
    --straggler-threshold R  flag a worker whose forward time stays over R x its peers' (1.5)
    --straggler-steps N      ... for N consecutive steps (10); it recovers after N under

Like ``torchrun``, a single-node job with no rendezvous endpoint runs on an embedded c10d store
(``--standalone``); nothing needs to be started by hand. Exit status: 0 when every worker
succeeded, 1 when the job failed or a signal stopped it (as ``torchrun``), 2 for bad input (one
line on stderr, with a "did you mean" for a misspelt flag).

Start-up is kept lean: argument checking imports neither torch nor the web stack. The endpoint's
socket listens before rendezvous, but FastAPI and uvicorn load on its own thread only at the
first request or a second after the workers are running, so they never delay a job's start.

The package: ``arguments`` (the parsers), ``validate`` (bad input to one-line errors), ``spec``
(what to launch), ``run`` (one run, start to finish), ``run_path`` (the worker side of
``--run-path``), ``events`` and ``stacks`` (those commands), ``errors`` and ``messages`` (how the command
ends and what it says), and here the dispatch to a command and the console script.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from agent.cli.arguments import build_events_parser, build_run_parser
from agent.cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
from agent.cli.messages import PROG
from agent.cli.run_path import run_script_path
from agent.cli.validate import check_run_args

__all__ = ["main", "entry", "build_run_parser", "build_events_parser", "check_run_args",
           "run_script_path", "UsageError"]


# A command's module loads only when that command runs. ``run`` brings the agent, the telemetry
# configuration and the endpoint with it, which neither ``events`` nor ``--version`` needs, nor
# a --run-path worker, which imports this package to find run_script_path.
def _run(argv: Sequence[str]) -> int:
    from agent.cli.run import run_command

    return run_command(argv)


def _events(argv: Sequence[str]) -> int:
    from agent.cli.events import events_command

    return events_command(argv)


def _stacks(argv: Sequence[str]) -> int:
    from agent.cli.stacks import stacks_command

    return stacks_command(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"run": _run, "events": _events, "stacks": _stacks}
USAGE = f"""usage: {PROG} run [torchrun flags] [observability flags] SCRIPT [ARGS...]
       {PROG} events [PATH] [--json] [--all]
       {PROG} stacks [URL|PATH] [--json]

  run      launch and supervise a distributed PyTorch job (a drop-in for torchrun)
  events   summarise a run from its event log
  stacks   every worker's Python stack of a running job, without stopping it

'{PROG} COMMAND --help' describes each command."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] == "--version":
        from telemetry.version import __version__  # loads the telemetry package: only when asked

        print(f"{PROG} {__version__}")
        return EXIT_OK
    command, rest = argv[0], argv[1:]
    prefix = f"{PROG} {command}" if command in COMMANDS else PROG
    try:
        if command not in COMMANDS:
            raise UsageError(f"unknown command {command!r} (expected one of: {', '.join(COMMANDS)})")
        return COMMANDS[command](rest)
    except UsageError as e:
        print(f"{prefix}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `elastiscope events | head`: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush stays quiet
        return EXIT_OK


def entry() -> None:
    """The console script: ``main()``, then a hard exit once output is flushed.

    When ``run`` returns, torch's daemon threads (rendezvous keep-alive, store clients) may
    still be inside C++ calls, and interpreter finalization can force-unwind them through a C++
    catch-all that does not rethrow: the process aborts ("FATAL: exception not rethrown", exit
    134) after a job that succeeded. By then telemetry is flushed and closed and no user code
    runs in this process, so finalization has nothing left to do and is skipped.
    """
    try:
        code = main()
    except BrokenPipeError:  # the reader of our output left (`elastiscope --version | head -0`)
        code = EXIT_OK
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken pipe: nothing more can be said on it anyway
            pass
    os._exit(code)
