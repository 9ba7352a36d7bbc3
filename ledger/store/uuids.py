"""Ids between the ledger's 16-byte values and PostgreSQL's uuid columns."""

from __future__ import annotations

from asyncpg.pgproto import pgproto

# asyncpg's own UUID type: built from bytes ten times faster than uuid.UUID,
# and encoded on a fast path.
U = pgproto.UUID


def u_opt(b: bytes):
    """An optional id (b"" when absent) as a uuid or NULL."""
    return pgproto.UUID(b) if b else None


def b_opt(u) -> bytes:
    """An optional uuid column as 16 bytes, or b"" for NULL."""
    return u.bytes if u is not None else b""
