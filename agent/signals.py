"""Termination signals in the local agent's run loop: which ones, and turning them into
torch's ``SignalException`` while the agent runs."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch.distributed.elastic.multiprocessing import SignalException

__all__ = ["DEFAULT_SIGNALS_TO_HANDLE", "signals_raise_in_run_loop"]

logger = logging.getLogger(__name__)

# Same variable and default as torch: which signals turn into a SignalException in the agent.
DEFAULT_SIGNALS_TO_HANDLE = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"


def _raise_signal_exception(signum: int, frame: Any) -> None:
    sigval = signal.Signals(signum)
    raise SignalException(f"Process {os.getpid()} got signal: {sigval}", sigval=sigval)


@contextmanager
def signals_raise_in_run_loop() -> Iterator[None]:
    """Turn termination signals into SignalException in this (the main) thread while running.

    ``SimpleElasticAgent.run`` catches it, stops the workers with the same signal and
    re-raises, so the caller exits non-zero with its final events recorded. The previous
    handlers come back afterwards (agents embedded in a larger program, tests).
    """
    if threading.current_thread() is not threading.main_thread():
        logger.warning(
            "agent running outside the main thread: termination signals are not handled, and "
            "workers are stopped only when run() returns or the process dies"
        )
        yield
        return
    names = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE", DEFAULT_SIGNALS_TO_HANDLE)
    previous = {}
    for name in names.split(","):
        sig = getattr(signal, name.strip(), None)
        if not isinstance(sig, signal.Signals):
            logger.warning("unknown signal %r in TORCHELASTIC_SIGNALS_TO_HANDLE", name)
            continue
        try:
            previous[sig] = signal.signal(sig, _raise_signal_exception)
        except (ValueError, OSError):
            logger.warning("cannot handle %s", name, exc_info=True)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
