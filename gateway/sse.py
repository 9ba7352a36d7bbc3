"""Server-sent events: ``data: <json>\\n\\n`` frames, ending with
``data: [DONE]``, sent by a small ASGI response that stops producing (and so
cancels the job upstream, which bills only what was delivered) as soon as
the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping

from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


def frame(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class EventStream:
    def __init__(self, events: AsyncIterator[bytes], *, headers: Mapping[str, str]) -> None:
        self._events = events
        self._headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                         (b"x-accel-buffering", b"no")]
        self._headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        stream = asyncio.create_task(self._stream(send))
        watch = asyncio.create_task(self._watch(receive))
        try:
            await asyncio.wait((stream, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (stream, watch):
                t.cancel()
            await asyncio.gather(stream, watch, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._events.aclose()  # type: ignore[attr-defined]
        if stream.done() and not stream.cancelled() and stream.exception() is not None:
            raise stream.exception()  # type: ignore[misc]

    async def _stream(self, send: Send) -> None:
        async for chunk in self._events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _watch(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
