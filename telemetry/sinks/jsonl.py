"""The event log: one JSON Lines file per run, one torch ``Event`` JSON per line.

Each event is handed to the kernel with one ``write`` on an ``O_APPEND`` descriptor as soon as
the delivery thread takes it, with no buffer of ours in between: a crash of the agent loses at
most the event in flight, and a log shipper tailing the file never sees half a line from us.
``close`` fsyncs, so a clean exit survives a power cut too.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from telemetry.records import Event
from telemetry.sink import Sink

__all__ = ["JsonlEventSink", "event_line", "run_log_name"]


def event_line(event: Event) -> bytes:
    """torch's ``Event.serialize()`` output plus a newline, built without ``asdict``'s deep copy.

    A metadata value JSON cannot encode is written as its ``str`` rather than losing the event.
    """
    source = event.source
    return (
        json.dumps(
            {
                "name": event.name,
                "source": getattr(source, "value", source),
                "timestamp": event.timestamp,
                "metadata": event.metadata,
            },
            default=str,
        )
        + "\n"
    ).encode()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def run_log_name(run_id: str | None) -> str:
    """File name for a run's log inside an event-log directory."""
    if run_id:
        safe = _UNSAFE.sub("_", str(run_id)).strip("._") or "run"
        return f"{safe}.jsonl"
    return f"elastiscope-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"


class JsonlEventSink(Sink):
    """Appends events to ``path``; if ``directory`` is given instead, to ``<directory>/<run_id>.jsonl``.

    With a directory and no ``run_id``, the file is named after the ``run_id`` of the first
    event that carries one (the run_start event does), so one configuration serves many runs.
    """

    name = "jsonl"
    metrics = False

    def __init__(self, path: str | os.PathLike | None = None, *, directory: str | os.PathLike | None = None,
                 run_id: str | None = None) -> None:
        if (path is None) == (directory is None):
            raise ValueError("give exactly one of path and directory")
        self._directory = Path(directory) if directory is not None else None
        self.path: Path | None = Path(path) if path is not None else None
        if self.path is None and run_id:
            self.path = self._directory / run_log_name(run_id)
        self._fd: int | None = None
        if self.path is not None:
            self._open()  # fail at configuration time, not at the first event

    def _open(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(self, record: Event) -> None:
        if self._fd is None:
            if self.path is None:
                self.path = self._directory / run_log_name(record.metadata.get("run_id"))  # type: ignore[operator]
            self._open()
        data = event_line(record)
        fd = self._fd
        while data:
            written = os.write(fd, data)  # type: ignore[arg-type]
            data = data[written:]

    def flush(self, timeout: float) -> bool:
        return True  # nothing is buffered in user space

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
