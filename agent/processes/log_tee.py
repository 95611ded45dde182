"""Copying workers' redirected log files onto the console, line by line, with a per-rank prefix."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any, TextIO

__all__ = ["TeeRoute", "LogTee"]

logger = logging.getLogger(__name__)


@dataclass
class TeeRoute:
    """One log file to follow: each complete line goes to every output whose filter accepts it."""

    path: str
    prefix: str
    outputs: list[tuple[TextIO, Callable[[str], bool] | None]]


class LogTee:
    """Copies what workers write to their log files onto the console, line by line, prefixed.

    Workers write to files, not pipes, so a slow console never blocks a worker and the file
    stays complete even if the agent dies; this thread follows the files like ``tail -f``.
    One thread follows every file. ``stop()`` copies whatever is left, closes the files in
    ``closes`` (outputs the tee was given to own, such as a file of filtered lines), then
    returns.
    """

    def __init__(self, routes: list[TeeRoute], interval: float = 0.1, closes: Iterable[IO] = ()) -> None:
        self._routes = routes
        self._interval = interval
        self._owned_outputs = list(closes)
        self._files: dict[int, Any] = {}
        self._partial: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LogTee:
        if self._routes:
            self._thread = threading.Thread(target=self._run, name="elastiscope-log-tee", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for output in self._owned_outputs:
            output.close()
        self._owned_outputs = []

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._interval):
                self._pump(final=False)
            self._pump(final=True)
        except Exception:  # a broken console must not take the agent down
            logger.exception("log tee stopped")
        finally:
            for f in self._files.values():
                f.close()

    def _pump(self, final: bool) -> None:
        for i, route in enumerate(self._routes):
            f = self._files.get(i)
            if f is None:
                try:
                    f = self._files[i] = open(route.path, errors="replace")  # noqa: SIM115
                except FileNotFoundError:
                    continue
            chunk = f.read()
            if not chunk and not (final and self._partial.get(i)):
                continue
            text = self._partial.pop(i, "") + chunk
            lines = text.split("\n")
            tail = lines.pop()
            if final and tail:
                lines.append(tail)
            elif tail:
                self._partial[i] = tail
            self._write(route, lines)

    @staticmethod
    def _write(route: TeeRoute, lines: list[str]) -> None:
        for dst, keep in route.outputs:
            out = [f"{route.prefix}{line}\n" for line in lines if keep is None or keep(line)]
            if out:
                dst.write("".join(out))
                dst.flush()

