"""What the relay sends down a node link besides single events (see
relay.proto): its Welcome, listing what it understands, and batches of the
events queued for one agent, bounded like the proto says."""

from __future__ import annotations

from collections.abc import Iterator

from idlegrid.relay.v1 import relay_pb2 as pb

# What this relay tells each agent it understands (Welcome, the link's first message).
WELCOME = pb.LinkDown(welcome=pb.Welcome(features=[pb.FEATURE_REPLY_LAST, pb.FEATURE_BATCH]))
# A DownBatch's bounds (relay.proto): events, and serialized bytes (a larger message goes alone).
BATCH_EVENTS_MAX = 64
BATCH_BYTES_MAX = 1 << 20


def batched(msgs: list[pb.LinkDown]) -> Iterator[tuple[pb.LinkDown, int]]:
    """``msgs`` in order, as few messages as the batch bounds allow, each
    with the number of events it carries."""
    group: list[pb.LinkDown] = []
    size = 0
    for msg in msgs:
        n = msg.ByteSize()
        if group and (len(group) >= BATCH_EVENTS_MAX or size + n > BATCH_BYTES_MAX):
            yield (group[0] if len(group) == 1 else pb.LinkDown(batch=pb.DownBatch(events=group))), len(group)
            group, size = [], 0
        group.append(msg)
        size += n
    if group:
        yield (group[0] if len(group) == 1 else pb.LinkDown(batch=pb.DownBatch(events=group))), len(group)
