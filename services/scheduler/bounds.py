"""What a node may send back for one job, derived from the job.

The bound travels to the relay with the call (``node_link.bounds``), which
cuts a node off at the link, and the scheduler enforces it again as the
replies arrive (a direct endpoint has no relay in between). A node past its
bound fails that job (NodeError): billed only for what was delivered.

    language models   replies_max     = max_tokens + REPLIES_SLACK
                      reply_bytes_max = max_tokens * TOKEN_BYTES_MAX
                                        + replies_max * REPLY_OVERHEAD_BYTES
                      texts_max       = max_tokens (replies that carry text:
                                        the scheduler delivers no more)
    tensor models     replies_max     = 1
                      reply_bytes_max = the outputs' size from the model's
                                        metadata when every shape and datatype
                                        is fixed (+ REPLY_OVERHEAD_BYTES per
                                        output), else TENSOR_REPLY_BYTES_MAX

max_tokens is the request's (planning: the caller's, or the default), the
same number the node is asked for in sampling_parameters. A streamed piece
with text is at least one token, so a well-behaved node sends at most
max_tokens of them, plus a few without text (the final flags); the
scheduler delivers no text piece past max_tokens (dispatch), and bills at
most max_tokens completion tokens (billing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from idlegrid.common import node_link
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

REPLIES_SLACK = 4
TOKEN_BYTES_MAX = 128  # the longest text one token may decode to, with margin
REPLY_OVERHEAD_BYTES = 1024  # a reply's framing: ids, tensor names, flags, counts
TENSOR_REPLY_BYTES_MAX = 64 << 20  # the cap when the outputs' size is not known: the channel's message limit
_DTYPE_BYTES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
                "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}


class BoundExceeded(Exception):
    """The node sent more than its bound."""


@dataclass(frozen=True, slots=True)
class ReplyBound:
    replies_max: int
    reply_bytes_max: int
    texts_max: int | None = None  # replies with text the caller may receive (language models)

    def headers(self) -> dict[str, str]:
        return node_link.bounds(reply_bytes_max=self.reply_bytes_max, replies_max=self.replies_max)


def for_llm(max_tokens: int) -> ReplyBound:
    assert max_tokens >= 1
    replies = max_tokens + REPLIES_SLACK
    return ReplyBound(replies, max_tokens * TOKEN_BYTES_MAX + replies * REPLY_OVERHEAD_BYTES, texts_max=max_tokens)


def for_tensors(meta: spb.ModelMetadata | None, requested: list[str] | None = None) -> ReplyBound:
    """From the outputs' metadata (only those ``requested``, when named)."""
    size = _outputs_bytes(meta, requested) if meta is not None else None
    return ReplyBound(1, TENSOR_REPLY_BYTES_MAX if size is None else min(size, TENSOR_REPLY_BYTES_MAX))


def _outputs_bytes(meta: spb.ModelMetadata, requested: list[str] | None) -> int | None:
    outs = [o for o in meta.outputs if not requested or o.name in requested]
    if not outs:
        return None
    total = 0
    for o in outs:
        width = _DTYPE_BYTES.get(o.datatype)
        if width is None or any(d < 0 for d in o.shape):
            return None  # BYTES or a variable dimension: not known ahead
        total += math.prod(o.shape) * width + REPLY_OVERHEAD_BYTES
    return total


class Meter:
    """Counts one call's replies and bytes against its bound."""

    __slots__ = ("bound", "replies", "reply_bytes")

    def __init__(self, bound: ReplyBound) -> None:
        self.bound = bound
        self.replies = 0
        self.reply_bytes = 0

    def add(self, reply_bytes: int) -> None:
        self.replies += 1
        self.reply_bytes += reply_bytes
        if self.replies > self.bound.replies_max:
            raise BoundExceeded(f"the node sent more than {self.bound.replies_max} replies")
        if self.reply_bytes > self.bound.reply_bytes_max:
            raise BoundExceeded(f"the node sent more than {self.bound.reply_bytes_max} bytes")
