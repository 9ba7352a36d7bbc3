"""What the agent sends up its node link (see relay.proto): the messages
that carry a call's replies and end, and the stream of queued messages,
several small ones as one UpBatch once the relay said it takes batches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc

from idlegrid.relay.v1 import relay_pb2 as pb

FEATURES = (pb.FEATURE_REPLY_LAST, pb.FEATURE_BATCH)  # what this agent understands (its Hello)
BATCH_EVENTS_MAX = 64  # an UpBatch: at most 64 events of at most 16 KiB each (larger ones go alone)
BATCH_EVENT_BYTES_MAX = 16 * 1024
END_MESSAGE_CHARS_MAX = 1024
END = pb.LinkUp()  # marks the end of the outgoing queue; never sent


def reply_message(call_id: int, payload: bytes, *, last: bool = False) -> pb.LinkUp:
    """A Reply; ``last``: it ends the call OK (only to a relay that takes it)."""
    msg = pb.LinkUp()
    r = msg.reply  # filled in place: the payload is copied once, not again into the envelope
    r.call_id, r.payload, r.last = call_id, payload, last
    return msg


def end_message(call_id: int, code: grpc.StatusCode, message: str) -> pb.LinkUp:
    return pb.LinkUp(end=pb.End(call_id=call_id, code=code.value[0], message=message[:END_MESSAGE_CHARS_MAX]))


async def outgoing(out: asyncio.Queue[pb.LinkUp], batching: Callable[[], bool]) -> AsyncIterator[pb.LinkUp]:
    """The messages queued in ``out``, in order, until END; while
    ``batching()``, those already waiting go as one UpBatch (a message that
    does not fit goes alone): fewer stream writes under load."""
    held: pb.LinkUp | None = None  # taken from the queue, not yet sent
    while True:
        msg, held = (held, None) if held is not None else (await out.get(), None)
        if msg is END:
            return
        if out.empty() or not batching() or msg.ByteSize() > BATCH_EVENT_BYTES_MAX:
            yield msg
            continue
        events = [msg]
        while len(events) < BATCH_EVENTS_MAX and not out.empty():
            held = out.get_nowait()
            if held is END or held.ByteSize() > BATCH_EVENT_BYTES_MAX:
                break
            events.append(held)
            held = None
        yield pb.LinkUp(batch=pb.UpBatch(events=events))
