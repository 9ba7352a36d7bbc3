"""Validation of InferRequest (limits documented in scheduler.proto)."""

from __future__ import annotations

import math
import re

from idlegrid.common.errors import InvalidArgument, ResourceExhausted
from idlegrid.scheduler import preferences
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

PROMPT_BYTES_MAX = 1 << 20
MESSAGES_MAX = 256
MAX_TOKENS_MAX = 32_768
STOPS_MAX, STOP_BYTES_MAX = 16, 256
TENSOR_BYTES_MAX = 64 << 20
TENSORS_MAX = 64
TIMEOUT_MS_MAX = 600_000
ROLES = frozenset({"system", "user", "assistant"})
_MODEL = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def _id(b: bytes, what: str) -> None:
    if len(b) != 16 or b == bytes(16):
        raise InvalidArgument(f"{what} must be 16 non-zero bytes")


def check(req: spb.InferRequest) -> None:
    _id(req.job_id, "job_id")
    _id(req.consumer_account_id, "consumer_account_id")
    if not _MODEL.match(req.model):
        raise InvalidArgument("model must be 1..128 characters of [A-Za-z0-9_.-]")
    if req.timeout_ms > TIMEOUT_MS_MAX:
        raise InvalidArgument(f"timeout_ms must be at most {TIMEOUT_MS_MAX}")
    preferences.check(req.provider)
    kind = req.WhichOneof("input")
    if kind == "text":
        t = req.text
        if bool(t.prompt) == bool(t.messages):
            raise InvalidArgument("give exactly one of prompt and messages")
        if len(t.messages) > MESSAGES_MAX:
            raise InvalidArgument(f"at most {MESSAGES_MAX} messages")
        size = len(t.prompt.encode()) + sum(len(m.content.encode()) for m in t.messages)
        if size > PROMPT_BYTES_MAX:
            raise ResourceExhausted(f"the prompt is larger than {PROMPT_BYTES_MAX} bytes", reason="too_large")
        for m in t.messages:
            if m.role not in ROLES:
                raise InvalidArgument(f"message role must be one of {sorted(ROLES)}")
        if t.max_tokens > MAX_TOKENS_MAX:
            raise InvalidArgument(f"max_tokens must be at most {MAX_TOKENS_MAX}")
        if t.HasField("temperature") and not (0 <= t.temperature <= 2 and math.isfinite(t.temperature)):
            raise InvalidArgument("temperature must be in [0, 2]")
        if t.HasField("top_p") and not (0 < t.top_p <= 1):
            raise InvalidArgument("top_p must be in (0, 1]")
        if len(t.stop) > STOPS_MAX or any(not s or len(s.encode()) > STOP_BYTES_MAX for s in t.stop):
            raise InvalidArgument(f"at most {STOPS_MAX} non-empty stop strings of {STOP_BYTES_MAX} bytes")
    elif kind == "tensors":
        ts = req.tensors.inputs
        if not 1 <= len(ts) <= TENSORS_MAX:
            raise InvalidArgument(f"between 1 and {TENSORS_MAX} input tensors")
        if sum(len(t.contents) for t in ts) > TENSOR_BYTES_MAX:
            raise ResourceExhausted(f"tensor inputs are larger than {TENSOR_BYTES_MAX} bytes", reason="too_large")
        for t in ts:
            if not t.name or not t.datatype or len(t.shape) > 16:
                raise InvalidArgument("each tensor needs a name, a datatype and at most 16 dimensions")
    else:
        raise InvalidArgument("give text or tensors")
