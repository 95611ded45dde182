"""A uvicorn server whose main loop sleeps until it is told to exit.

Imports uvicorn, so only the endpoint's serving thread imports it, once a client or a warm-up
asks for the app.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

__all__ = ["IdleServer"]


class IdleServer(uvicorn.Server):
    """``uvicorn.Server`` without the polling main loop.

    uvicorn's ``main_loop`` wakes every 0.1 s to look at ``should_exit`` (and to refresh the
    Date header, see ``middleware.DateHeader``): on an idle agent that was a third of its CPU.
    Here setting ``should_exit`` (from any thread) wakes the loop through the event loop's own
    thread-safe call, so stopping stays immediate and nothing polls meanwhile.
    """

    # The event loop it serves on, once ``main_loop`` runs (None before).
    loop: Any = None
    _exit_requested: Any = None
    _should_exit = False

    @property  # type: ignore[override]
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        # Read after the write: either main_loop sees the flag when it starts waiting, or
        # we see its loop and event here and wake it.
        loop, requested = self.loop, self._exit_requested
        if value and loop is not None and requested is not None:
            try:
                loop.call_soon_threadsafe(requested.set)
            except RuntimeError:  # the loop is already closed: nothing left to wake
                pass

    async def main_loop(self) -> None:
        # One tick sets uvicorn's default headers (and honours anything else on_tick does
        # at start); after that only an exit request wakes this coroutine.
        if await self.on_tick(0):
            return
        self._exit_requested = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        if self._should_exit:
            return
        await self._exit_requested.wait()
