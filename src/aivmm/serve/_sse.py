"""Server-sent events over ASGI, and the disconnect watch every long LLM response needs.

Hand-written because the format is two lines (``data: ...`` and a blank line) and the part that
matters here, cancelling the generation the moment the client goes away, is specific to how the
data plane frees KV memory; an SSE library would add a dependency for the easy half only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DONE = b"data: [DONE]\n\n"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies must not hold tokens back
]


def event(obj: Any) -> bytes:
    """One ``data:`` event; compact JSON never contains a newline, so one line is enough."""
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def start(send: Send, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": list(HEADERS)})


async def write(send: Send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def finish(send: Send, chunk: bytes = b"") -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": False})


async def until_disconnect(receive: Receive) -> None:
    """Returns when the client has gone (the body was read already, so nothing else arrives)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(receive: Receive, work: Coroutine[Any, Any, None]) -> bool:
    """Run ``work``; cancel it if the client disconnects first. True when it was cancelled.

    One watcher task per request, not a select per token: the work task sends its own events and
    only this one wait joins the two.
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(until_disconnect(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server itself is stopping this request
        task.cancel()
        watch.cancel()
        raise
    if task.done():
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        task.result()  # re-raise what the work raised
        return False
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return True
