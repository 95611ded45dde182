"""A worker that dies of an uncaught exception leaves without the interpreter's finalisation.

After an uncaught exception Python prints the traceback, runs the ``atexit`` handlers, then
finalises: it tears every module down and collects their objects. With torch and what DDP
imports loaded, that last part takes 0.6-2.5 s here, and the agent -- torchrun's as ours --
learns of the failure only when the process has exited, so the whole restart waits for it.
Nothing in it matters to a job that has failed, except unwritten file buffers.

``install()`` (run by our ``sitecustomize`` at worker start-up) chains a function to
``sys.excepthook`` that notes the uncaught exception, and registers an ``atexit`` handler
first, so that it runs last, after every handler the script or its libraries registered
(logging's flush included). When the exception was noted, that handler flushes every open
writable file object, then ends the process with status 1 -- the status Python gives an
uncaught exception -- skipping the module teardown. Costs nothing until the exception: no
thread, no work per step. ``ELASTISCOPE_FAST_FAILURE_EXIT=0`` in the worker's environment
(read at exit) keeps the full finalisation; so does a script that replaces ``sys.excepthook``
without calling the one it replaced (torch's ``init_process_group`` wraps it, and calls it).
Not in interactive mode (``python -i``), where the interpreter lives on.
"""

import atexit
import os
import sys

__all__ = ["install", "ENABLED_ENV"]

ENABLED_ENV = "ELASTISCOPE_FAST_FAILURE_EXIT"
_UNCAUGHT_EXIT_STATUS = 1


class _FailureExit:
    def __init__(self, previous_hook):
        self.previous_hook = previous_hook
        self.uncaught = False

    def excepthook(self, kind, value, traceback):
        self.uncaught = not issubclass(kind, SystemExit)
        self.previous_hook(kind, value, traceback)

    def at_exit(self):
        if not self.uncaught or sys.flags.inspect:
            return
        if os.environ.get(ENABLED_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
            return
        _flush_open_files()
        os._exit(_UNCAUGHT_EXIT_STATUS)


def _flush_open_files():
    """What finalisation would have flushed: every open writable file object's buffer, text
    layers before the binary ones under them."""
    import gc
    import io

    kinds = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom)
    files = [f for f in gc.get_objects() if type(f) in kinds]
    files.sort(key=lambda f: type(f) is not io.TextIOWrapper)
    for f in (*files, sys.stdout, sys.stderr):
        try:
            if not f.closed and f.writable():
                f.flush()
        except Exception:  # a broken file must not stop the exit
            pass


def install():
    """Arrange the fast exit (idempotent); call at start-up, before the script runs."""
    if isinstance(getattr(sys.excepthook, "__self__", None), _FailureExit):
        return
    state = _FailureExit(sys.excepthook)
    sys.excepthook = state.excepthook
    atexit.register(state.at_exit)
