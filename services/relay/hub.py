"""The links one relay replica holds, by node, and the calls on each.

A link is one agent's Link stream. Calls for the node become per-call
streams on it: the relay sends Call (and Input, Credit, Cancel) down, the
agent sends Reply and End up (a unary success: one Reply marked ``last``;
several events may travel as one batch, see relay.wire). Each call buffers
at most its window of replies; a node that sends past its window or past a
bound fails that call and the call is cancelled on the node.

Link lifecycle (one direction only)::

    OPEN --(agent ends / link replaced / no pong / relay stops)--> CLOSED

A CLOSED link takes no calls, and every call still on it ends UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import structlog

from idlegrid.common.errors import ResourceExhausted, Unavailable
from idlegrid.relay.settings import RelaySettings
from idlegrid.relay.v1 import relay_pb2 as pb
from idlegrid.relay.wire import batched

log = structlog.get_logger("relay.hub")

_CODES = {c.value[0]: c for c in grpc.StatusCode}


@dataclass(frozen=True, slots=True)
class End:
    """How a call ended: a gRPC status code and message."""

    code: grpc.StatusCode
    message: str = ""


END_OK = End(grpc.StatusCode.OK)
# Pings go out in chunks, a short pause apart (calls are not held up behind one large burst).
PING_CHUNK = 256
PING_PAUSE_S = 0.005


def status_code(value: int) -> grpc.StatusCode:
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)


class RelayCall:
    """One call on a link: the replies not yet passed to the caller (at most
    ``window``), then its End."""

    __slots__ = ("call_id", "window", "replies_max", "reply_bytes_max", "replies", "reply_bytes",
                 "items", "ended", "_waiter")

    def __init__(self, call_id: int, *, window: int, replies_max: int, reply_bytes_max: int) -> None:
        self.call_id = call_id
        self.window = window
        self.replies_max = replies_max
        self.reply_bytes_max = reply_bytes_max
        self.replies = 0
        self.reply_bytes = 0
        self.items: deque[bytes | End] = deque()
        self.ended = False
        self._waiter: asyncio.Future | None = None  # the caller waiting in next(), if any

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
        self._wake()
        return None

    def end(self, end: End, *, drop_replies: bool = False) -> None:
        if self.ended:
            return
        self.ended = True
        if drop_replies:
            self.items.clear()
        self.items.append(end)
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> bytes | End:
        while not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.items.popleft()


class Link:
    """One agent's link: the messages queued to it and its calls.

    An idle link holds no task of its own: the Link handler waits on the
    agent's next message, and a writer task runs only while messages are
    queued to the agent (``write`` sends one down the stream)."""

    __slots__ = ("node_id", "link_id", "settings", "out", "calls", "closed", "close_reason", "last_seen",
                 "buffered_high", "batch", "_next_id", "_write", "_writer", "_sending", "_room", "_on_close")

    def __init__(self, node_id: bytes, link_id: bytes, settings: RelaySettings, *,
                 write: Callable[[pb.LinkDown], Awaitable[None]] | None = None,
                 on_close: Callable[[], None] | None = None, batch: bool = False) -> None:
        """``write``: sends one message to the agent (the stream's
        context.write); ``on_close``: wakes the Link handler; ``batch``: the
        agent takes DownBatch (its Hello lists FEATURE_BATCH)."""
        self.node_id = node_id
        self.link_id = link_id
        self.settings = settings
        self.out: list[pb.LinkDown] = []  # queued to the agent (a list: an idle link's is 56 bytes)
        self.calls: dict[int, RelayCall] = {}
        self.closed = False
        self.close_reason = ""
        self.last_seen = time.monotonic()
        self.buffered_high = 0  # the most replies ever buffered for one call (tests, the bench)
        self.batch = batch
        self._next_id = 1
        self._write = write
        self._writer: asyncio.Task | None = None
        self._sending = 0  # taken from ``out`` by the writer, not yet written
        self._room: asyncio.Event | None = None  # made when a sender waits for room in the queue
        self._on_close = on_close

    # -- relay -> agent
    def send_nowait(self, msg: pb.LinkDown) -> None:
        """Queues a small control message; an agent that stopped reading is cut off."""
        if self.closed:
            return
        if len(self.out) + self._sending >= self.settings.link_queue_max:
            self.close("the agent stopped reading its link")
            return
        self.out.append(msg)
        if self._writer is None and self._write is not None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def send(self, msg: pb.LinkDown) -> None:
        """Queues a message, waiting while the agent's queue is full."""
        while not self.closed and len(self.out) + self._sending >= self.settings.link_queue_max:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        if self.closed:
            raise Unavailable("the node's link dropped")
        self.send_nowait(msg)

    async def _drain(self) -> None:
        """The writer: sends what is queued, then ends (a new one starts with
        the next message)."""
        try:
            while self.out and not self.closed:
                msgs, self.out = self.out, []
                self._sending = len(msgs)
                for msg, events in (batched(msgs) if self.batch and len(msgs) > 1 else ((m, 1) for m in msgs)):
                    await self._write(msg)
                    self._sending -= events
                    if self._room is not None:
                        self._room.set()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the stream broke: the link is gone
            self.close(f"the link broke: {type(e).__name__}")
        finally:
            self._writer = None
            self._sending = 0

    def open_call(self, method: str, payload: bytes, *, timeout_ms: int, window: int, input_done: bool,
                  replies_max: int, reply_bytes_max: int) -> RelayCall:
        if self.closed:
            raise Unavailable("the node's link dropped")
        if len(self.calls) >= self.settings.calls_per_link_max:
            raise ResourceExhausted(f"the node has {self.settings.calls_per_link_max} calls in flight")
        call = RelayCall(self._next_id, window=window, replies_max=replies_max, reply_bytes_max=reply_bytes_max)
        self._next_id += 1
        self.calls[call.call_id] = call
        msg = pb.LinkDown()
        c = msg.call  # filled in place: the payload is copied once, not again into the envelope
        c.call_id, c.method, c.payload, c.timeout_ms = call.call_id, method, payload, timeout_ms
        c.window, c.reply_bytes_max, c.input_done = window, reply_bytes_max, input_done
        self.send_nowait(msg)
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
            reply = msg.reply
            call = self.calls.get(reply.call_id)
            if call is None or call.ended:
                return  # cancelled here; the node has not seen the Cancel yet
            why = call.on_reply(reply.payload)
            if why is not None:
                self.calls.pop(call.call_id, None)
                call.end(End(grpc.StatusCode.RESOURCE_EXHAUSTED, why), drop_replies=True)
                self.send_nowait(pb.LinkDown(cancel=pb.Cancel(call_id=call.call_id)))
                return
            if reply.last:  # the call's last reply, and it ended OK: no End follows
                del self.calls[call.call_id]
                call.end(END_OK)
            elif len(call.items) > self.buffered_high:
                self.buffered_high = len(call.items)
        elif kind == "end":
            call = self.calls.pop(msg.end.call_id, None)
            if call is not None:
                call.end(End(status_code(msg.end.code), msg.end.message[:1024]))
        elif kind == "batch":
            for event in msg.batch.events:
                if event.WhichOneof("event") == "batch":
                    self.close("a batch inside a batch")
                if self.closed:
                    return
                self.on_up(event)
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
        self.out.clear()
        if self._room is not None:
            self._room.set()
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        if self._on_close is not None:
            self._on_close()  # the handler ends the stream


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
            self._nonce += 1
            ping = pb.LinkDown(ping=pb.Ping(nonce=self._nonce))
            links = list(self.links.values())
            for start in range(0, len(links), PING_CHUNK):
                if start:  # the last chunk's writes finish first: no burst of 10,000 writers at once
                    await asyncio.sleep(PING_PAUSE_S)
                now = time.monotonic()
                for link in links[start:start + PING_CHUNK]:
                    if link.closed:
                        continue
                    if now - link.last_seen > timeout_s:
                        log.warning("relay.link_silent", node_id=link.node_id.hex())
                        link.close("the agent stopped answering pings")
                    else:
                        link.send_nowait(ping)
