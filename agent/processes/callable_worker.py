"""The body of a callable worker's process: what it does between boot and exit.

A callable worker is started by ``multiprocessing`` (see :class:`~agent.processes.WorkerSet`)
and runs :func:`run_callable_worker`. It takes the same steps as torch's, minus torch's eager
imports: a worker that does not use torch does not pay for importing it.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from agent.processes.spawner_process import die_with_parent

__all__ = ["CallableBoot", "run_callable_worker"]


@dataclass
class CallableBoot:
    """What a callable worker needs at boot; pickled across by multiprocessing."""

    fn: Callable[..., Any]
    args: tuple
    env: dict[str, str]
    stdout: str
    stderr: str
    result_file: str
    parent_pid: int | None
    # Shared by the attempt's callable workers: one that has returned waits here for the
    # others before its process exits (see run_callable_worker).
    all_returned: Any = None


def run_callable_worker(boot: CallableBoot) -> None:
    """Run the worker's function and leave its return value in ``boot.result_file``.

    A worker that returns stays alive until every local worker has returned, as torch's do.
    Its process may own one end of connections its peers still use (a gloo rank's sockets):
    exiting at once would tear them down under a peer still finishing its own last
    collective, and that peer would abort. A worker that fails exits at once; the agent then
    stops the others.
    """
    die_with_parent(boot.parent_pid)
    try:
        os.setsid()  # its own process group, so that a stop reaches the worker's children too
    except OSError:
        pass
    _redirect_fd(1, boot.stdout, sys.stdout)
    _redirect_fd(2, boot.stderr, sys.stderr)
    os.environ.update(boot.env)
    _arrange_progress_hook()
    result = _call_recording_errors(boot.fn, boot.args)
    tmp = f"{boot.result_file}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    os.replace(tmp, boot.result_file)
    if boot.all_returned is not None:
        boot.all_returned.wait()


def _arrange_progress_hook() -> None:
    """Count the callable's optimizer steps, as our sitecustomize does for a script worker (a
    callable's interpreter was started before its environment was known)."""
    if os.environ.get("ELASTISCOPE_PROGRESS_SITE"):
        from elastiscope import progress_hook  # small, and imports no torch

        progress_hook.install()
    from elastiscope import stack_dump  # the stack dump the agent may ask for (no-op unasked)

    stack_dump.install()


def _redirect_fd(fd: int, path: str, stream: TextIO) -> None:
    if not path:
        return
    stream.flush()
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(target, fd)
    os.close(target)


def _call_recording_errors(fn: Callable[..., Any], args: tuple) -> Any:
    """Run ``fn`` as torch's ``@record`` would: an uncaught exception lands in the error file.

    torch's error handler is imported only when there is an error to write, so a worker that
    does not use torch does not pay for importing it.
    """
    faulthandler.enable(all_threads=True)
    try:
        return fn(*args)
    except SystemExit as exc:
        if exc.code == 0:
            return None
        raise
    except Exception as exc:
        errors = sys.modules.get("torch.distributed.elastic.multiprocessing.errors")
        if errors is not None and isinstance(exc, errors.ChildFailedError):
            _, failure = exc.get_first_failure()
            if failure.error_file != "<N/A>":
                errors.get_error_handler().dump_error_file(failure.error_file, failure.exitcode)
        else:
            from torch.distributed.elastic.multiprocessing.errors import get_error_handler

            get_error_handler().record_exception(exc)
        raise
