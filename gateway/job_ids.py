"""Job ids for inference requests: a fresh UUID4, or, when the caller sends
an ``Idempotency-Key`` header, one derived from that key and the paying
account, so that a retried request is never run (or charged) twice: the
scheduler refuses a job id it has seen, and the retry gets a 409."""

from __future__ import annotations

import hashlib
import os
import re
import uuid

from starlette.requests import Request

from idlegrid.gateway.errors import bad_request

IDEMPOTENCY_HEADER = "idempotency-key"
KEY_CHARS_MAX = 128
_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces


def random_uuid4() -> bytes:
    """The 16 bytes of a fresh random UUID4: ``uuid.uuid4().bytes`` without
    building a ``uuid.UUID`` (a few microseconds on every request)."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # RFC 4122 variant
    return bytes(b)


def job_id(request: Request, account_id: bytes) -> bytes:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return random_uuid4()
    if not _KEY.match(key):
        raise bad_request(f"Idempotency-Key must be 1..{KEY_CHARS_MAX} printable ASCII characters without spaces",
                          param="Idempotency-Key", code="invalid_idempotency_key")
    h = hashlib.sha256(b"idlegrid.gateway.job\x00" + account_id + b"\x00" + key.encode()).digest()
    return bytes(uuid.UUID(bytes=h[:16], version=4).bytes)  # a valid UUID, never all zeros


def job_uuid(job: bytes) -> str:
    """``str(uuid.UUID(bytes=job))``, written out directly."""
    h = job.hex()
    if len(h) != 32:
        raise ValueError("a job id is 16 bytes")
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
