"""This process's progress record, opened on first use: shared by the explicit API
(``elastiscope.progress``) and the optimizer-step hook (``elastiscope.progress_hook``)."""

from __future__ import annotations

import atexit
import os

from elastiscope.progress_layout import CHANNEL_ENV, F_EXITING, ProgressWriter

__all__ = ["channel"]


class _Channel:
    """Holds the process's one writer. The record's path is read from the environment at the
    first report, not at import: a standby interpreter learns its worker's environment late."""

    def __init__(self) -> None:
        self._writer: ProgressWriter | None = None
        self._looked = False  # the environment was read (once: no look-up per step)
        # A forked child (a data loader worker) reports nothing: the record is its parent's.
        os.register_at_fork(after_in_child=self._forget)

    def writer(self) -> ProgressWriter | None:
        writer = self._writer
        if writer is not None or self._looked:
            return writer
        return self._open()

    def _open(self) -> ProgressWriter | None:
        self._looked = True
        path = os.environ.get(CHANNEL_ENV)
        if path:
            try:
                self._writer = ProgressWriter(path)
            except (OSError, ValueError):
                pass  # telemetry never breaks the job: no record, no reports
            else:
                # Once, at the first report: the agent must not take a slow exit for a stall.
                atexit.register(self._exiting)
        return self._writer

    def _exiting(self) -> None:
        writer = self._writer
        if writer is not None:
            writer.set_flag(F_EXITING)

    def _forget(self) -> None:
        self._writer, self._looked = None, True


# The process's one channel: progress is per process, like the record it writes.
channel = _Channel()
