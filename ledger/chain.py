"""The hash chain: each committed batch hashes its transfers, in commit order,
onto the previous batch's hash. ``verify`` recomputes it from the rows."""

from __future__ import annotations

import hashlib
import struct
from datetime import UTC, datetime

GENESIS = bytes(32)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TRANSFER = struct.Struct(">Q16s16s16sQ16s16sIIII")
_BATCH = struct.Struct(">QQQq")


def micros(ts: datetime) -> int:
    """Exact microseconds since the epoch (Postgres keeps microseconds)."""
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    from datetime import timedelta

    return _EPOCH + timedelta(microseconds=us)


def transfer_bytes(seq: int, tid: bytes, dr: bytes, cr: bytes, amount: int, pending_id: bytes,
                   user_data: bytes, timeout_s: int, ledger: int, code: int, flags: int) -> bytes:
    return _TRANSFER.pack(seq, tid, dr, cr, amount, pending_id or bytes(16), user_data or bytes(16),
                          timeout_s, ledger, code, flags)


def batch_hash(prev_hash: bytes, batch: int, first_seq: int, last_seq: int, committed_us: int,
               transfers: list[bytes]) -> bytes:
    h = hashlib.sha256(prev_hash)
    h.update(_BATCH.pack(batch, first_seq, last_seq, committed_us))
    for t in transfers:
        h.update(t)
    return h.digest()
