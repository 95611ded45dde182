"""ASGI middleware of the served endpoint: the HTTP ``Date`` header, stamped per response.

Plain ASGI, no web-stack imports.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

__all__ = ["DateHeader"]


class DateHeader:
    """ASGI middleware adding the HTTP ``Date`` header to every response.

    uvicorn keeps its Date header current by waking its event loop ten times a second; an
    agent's endpoint is scraped every few seconds at most, so the date is formatted when a
    response starts instead (at most once per second of wall time), and an idle endpoint's
    thread sleeps until a client comes.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._second = -1
        self._value = b""

    def _now(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._value = formatdate(now, usegmt=True).encode()
            self._second = second
        return self._value

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_date(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(b"date", self._now()), *message.get("headers", ())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_date)
