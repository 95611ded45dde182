"""Server-sent events from the event ring, woken by each new event instead of polling.

Imported only by the route module (when an app is built).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, AsyncIterator, Callable

from telemetry.endpoint.payloads import event_record

if TYPE_CHECKING:  # pragma: no cover
    from telemetry.endpoint.routes import EventQuery
    from telemetry.sinks.memory import MemorySink

__all__ = ["KEEP_ALIVE", "sse_frame", "keep_alive_frames", "wake_on_event", "event_frames"]

# A comment line: clients ignore it, proxies and load balancers see a live connection.
KEEP_ALIVE = ": keep-alive\n\n"


def sse_frame(seq: int, event: object) -> str:
    """One event as a server-sent event block: its seq as ``id``, its name as ``event``."""
    data = json.dumps(event_record(seq, event), separators=(",", ":"))
    return f"id: {seq}\nevent: {event.name}\ndata: {data}\n\n"  # type: ignore[attr-defined]


async def keep_alive_frames(heartbeat_seconds: float) -> AsyncIterator[str]:
    """A stream with no ring behind it: nothing will ever arrive, so only keep it open."""
    while True:
        await asyncio.sleep(heartbeat_seconds)
        yield KEEP_ALIVE


def wake_on_event(arrived: asyncio.Event) -> Callable[[], None]:
    """A ring listener that wakes ``arrived`` on the running event loop from any thread."""
    loop = asyncio.get_running_loop()

    def on_event() -> None:
        # Runs on the producer's thread. One wake-up per batch: while a wake-up is pending,
        # the events after it are read by the same pass.
        if not arrived.is_set():
            try:
                loop.call_soon_threadsafe(arrived.set)
            except RuntimeError:  # the loop closed under a late event
                pass

    return on_event


async def event_frames(
    ring: "MemorySink", since: int, query: "EventQuery", heartbeat_seconds: float
) -> AsyncIterator[str]:
    """Every event after ``since`` that ``query`` matches, as it arrives, for as long as the
    client stays; a keep-alive comment after each ``heartbeat_seconds`` without one."""
    last = since
    arrived = asyncio.Event()
    on_event = wake_on_event(arrived)
    ring.add_listener(on_event)
    try:
        while True:
            # Cleared before reading: an event published after the read sets it again.
            arrived.clear()
            found, head = query.run(ring, since=last)
            last = max(last, head)
            for seq, event in found:
                yield sse_frame(seq, event)
            try:
                await asyncio.wait_for(arrived.wait(), heartbeat_seconds)
            except asyncio.TimeoutError:
                yield KEEP_ALIVE
    finally:
        ring.remove_listener(on_event)
