"""The links one relay replica holds, by node, and the calls on each.

A link is one agent's Link stream. Calls for the node become per-call
streams on it: the relay sends Call (and Input, Credit, Cancel) down, the
agent sends Reply and End up. Each call buffers at most its window of
replies; a node that sends past its window or past a bound fails that call
and the call is cancelled on the node.

Link lifecycle (one direction only)::

    OPEN --(agent ends / link replaced / no pong / relay stops)--> CLOSED

A CLOSED link takes no calls, and every call still on it ends UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import grpc
import structlog

from idlegrid.common.errors import ResourceExhausted, Unavailable
from idlegrid.relay.settings import RelaySettings
from idlegrid.relay.v1 import relay_pb2 as pb

log = structlog.get_logger("relay.hub")

_CODES = {c.value[0]: c for c in grpc.StatusCode}


@dataclass(frozen=True, slots=True)
class End:
    """How a call ended: a gRPC status code and message."""

    code: grpc.StatusCode
    message: str = ""


def status_code(value: int) -> grpc.StatusCode:
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)


class RelayCall:
    """One call on a link: the replies not yet passed to the caller (at most
    ``window``), then its End."""

    __slots__ = ("call_id", "window", "replies_max", "reply_bytes_max", "replies", "reply_bytes",
                 "items", "ended", "_ready")

    def __init__(self, call_id: int, *, window: int, replies_max: int, reply_bytes_max: int) -> None:
        self.call_id = call_id
        self.window = window
        self.replies_max = replies_max
        self.reply_bytes_max = reply_bytes_max
        self.replies = 0
        self.reply_bytes = 0
        self.items: deque[bytes | End] = deque()
        self.ended = False
        self._ready = asyncio.Event()

    def on_reply(self, payload: bytes) -> str | None:
        """Queues a reply; returns why the call must fail instead (a bound or
        the window exceeded)."""
        self.replies += 1
        self.reply_bytes += len(payload)
        if self.replies > self.replies_max:
            return f"the node sent more than {self.replies_max} replies"
        if self.reply_bytes > self.reply_bytes_max:
            return f"the node sent more than {self.reply_bytes_max} reply bytes"
        if len(self.items) >= self.window:
            return f"the node sent past its window of {self.window} replies"
        self.items.append(payload)
        self._ready.set()
        return None

    def end(self, end: End, *, drop_replies: bool = False) -> None:
        if self.ended:
            return
        self.ended = True
        if drop_replies:
            self.items.clear()
        self.items.append(end)
        self._ready.set()

    async def next(self) -> bytes | End:
        while not self.items:
            self._ready.clear()
            await self._ready.wait()
        return self.items.popleft()


class Link:
    """One agent's link: the messages queued to it and its calls."""

    def __init__(self, node_id: bytes, link_id: bytes, settings: RelaySettings) -> None:
        self.node_id = node_id
        self.link_id = link_id
        self.settings = settings
        self.out: asyncio.Queue[pb.LinkDown | None] = asyncio.Queue(settings.link_queue_max)
        self.calls: dict[int, RelayCall] = {}
        self.closed = False
        self.close_reason = ""
        self.last_seen = time.monotonic()
        self.buffered_high = 0  # the most replies ever buffered for one call (tests, the bench)
        self._next_id = 1

    # -- relay -> agent
    def send_nowait(self, msg: pb.LinkDown) -> None:
        """Queues a small control message; an agent that stopped reading is cut off."""
        if self.closed:
            return
        try:
            self.out.put_nowait(msg)
        except asyncio.QueueFull:
            self.close("the agent stopped reading its link")

    async def send(self, msg: pb.LinkDown) -> None:
        """Queues a message, waiting while the agent's queue is full."""
        if self.closed:
            raise Unavailable("the node's link dropped")
        await self.out.put(msg)

    def open_call(self, method: str, payload: bytes, *, timeout_ms: int, window: int, input_done: bool,
                  replies_max: int, reply_bytes_max: int) -> RelayCall:
        if self.closed:
            raise Unavailable("the node's link dropped")
        if len(self.calls) >= self.settings.calls_per_link_max:
            raise ResourceExhausted(f"the node has {self.settings.calls_per_link_max} calls in flight")
        call = RelayCall(self._next_id, window=window, replies_max=replies_max, reply_bytes_max=reply_bytes_max)
        self._next_id += 1
        self.calls[call.call_id] = call
        self.send_nowait(pb.LinkDown(call=pb.Call(
            call_id=call.call_id, method=method, payload=payload, timeout_ms=timeout_ms, window=window,
            reply_bytes_max=reply_bytes_max, input_done=input_done)))
        if self.closed:  # the queue was full
            self.calls.pop(call.call_id, None)
            raise Unavailable("the node's link dropped")
        return call

    def finish(self, call: RelayCall) -> None:
        """The caller is done with ``call``: cancel it on the node unless it ended."""
        self.calls.pop(call.call_id, None)
        if not call.ended:
            call.ended = True
            self.send_nowait(pb.LinkDown(cancel=pb.Cancel(call_id=call.call_id)))

    # -- agent -> relay
    def on_up(self, msg: pb.LinkUp) -> None:
        self.last_seen = time.monotonic()
        kind = msg.WhichOneof("event")
        if kind == "reply":
            call = self.calls.get(msg.reply.call_id)
            if call is None or call.ended:
                return  # cancelled here; the node has not seen the Cancel yet
            why = call.on_reply(msg.reply.payload)
            if why is not None:
                self.calls.pop(call.call_id, None)
                call.end(End(grpc.StatusCode.RESOURCE_EXHAUSTED, why), drop_replies=True)
                self.send_nowait(pb.LinkDown(cancel=pb.Cancel(call_id=call.call_id)))
            elif len(call.items) > self.buffered_high:
                self.buffered_high = len(call.items)
        elif kind == "end":
            call = self.calls.pop(msg.end.call_id, None)
            if call is not None:
                call.end(End(status_code(msg.end.code), msg.end.message[:1024]))
        elif kind == "hello":
            self.close("a second Hello on the link")

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        calls, self.calls = self.calls, {}
        for call in calls.values():
            call.end(End(grpc.StatusCode.UNAVAILABLE, f"the node's link dropped: {reason}"))
        while True:  # wake the writer: it ends the stream
            try:
                self.out.put_nowait(None)
                return
            except asyncio.QueueFull:
                self.out.get_nowait()


class Hub:
    """node_id -> its link on this replica; one link per node (a new link
    from the same node replaces the old one)."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.links: dict[bytes, Link] = {}
        self._pinger: asyncio.Task | None = None
        self._nonce = 0

    def get(self, node_id: bytes) -> Link | None:
        return self.links.get(node_id)

    def reserve(self) -> None:
        if len(self.links) >= self.settings.links_max:
            raise ResourceExhausted(f"this relay holds {self.settings.links_max} links")

    def attach(self, link: Link) -> None:
        old = self.links.get(link.node_id)
        self.links[link.node_id] = link
        if old is not None and old is not link:
            old.close("replaced by a new link from the same node")

    def detach(self, link: Link) -> bool:
        """Forgets ``link``; False when the node already holds a newer one."""
        if self.links.get(link.node_id) is link:
            del self.links[link.node_id]
            return True
        return False

    async def drain(self, timeout_s: float, *, every_s: float = 0.05) -> None:
        """Waits until no link has a call in flight, or ``timeout_s`` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any(link.calls for link in self.links.values()) and loop.time() < deadline:  # noqa: ASYNC110 - calls end on many links
            await asyncio.sleep(every_s)

    def start(self) -> None:
        self._pinger = asyncio.create_task(self._ping_loop(), name="relay-pinger")

    async def stop(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
        for link in list(self.links.values()):
            link.close("the relay is stopping")

    async def _ping_loop(self) -> None:
        interval_s = self.settings.ping_interval_ms / 1000
        timeout_s = self.settings.pong_timeout_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            self._nonce += 1
            ping = pb.LinkDown(ping=pb.Ping(nonce=self._nonce))
            for link in list(self.links.values()):
                if now - link.last_seen > timeout_s:
                    log.warning("relay.link_silent", node_id=link.node_id.hex())
                    link.close("the agent stopped answering pings")
                else:
                    link.send_nowait(ping)
