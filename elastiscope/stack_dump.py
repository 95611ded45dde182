"""Every thread's Python stack written to a file when the agent asks, with no cost to the loop.

``install()`` (run at worker start-up by our ``sitecustomize``, a standby's boot or a callable
worker's body) registers ``faulthandler`` for ``STACK_SIGNAL`` with the file the agent named
in ``ELASTISCOPE_STACK_FILE``. faulthandler's handler is C code that runs inside the signal
handler itself, so a worker blocked in C (a gloo wait, a sleep) still writes its stack, and the
training loop pays nothing: no thread, no check per step. The file is opened for appending, so
the agent finds each new dump after the size it saw before sending the signal.

This is the agent's fallback when py-spy cannot read a worker (not installed, ptrace denied).
Imports nothing of ours (the agent uses the names too).
"""

from __future__ import annotations

import faulthandler
import os
import signal

__all__ = ["STACK_FILE_ENV", "STACK_SIGNAL", "install"]

STACK_FILE_ENV = "ELASTISCOPE_STACK_FILE"
# SIGUSR2: its default action would end the process, so it is only ever sent to a worker that
# registered it (the agent checks the worker's signal mask first).
STACK_SIGNAL = signal.SIGUSR2


def install() -> bool:
    """Register the dump if the agent asked for one (idempotent); True when registered."""
    path = os.environ.get(STACK_FILE_ENV)
    if not path:
        return False
    try:
        # faulthandler keeps a reference to the file: it stays open for the process's life.
        stream = open(path, "a", encoding="utf-8")  # noqa: SIM115
        faulthandler.register(STACK_SIGNAL, file=stream, all_threads=True, chain=False)
    except (OSError, ValueError, RuntimeError):
        return False  # telemetry never breaks the job: the agent then has py-spy only
    return True
