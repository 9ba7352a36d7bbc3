"""The checkpointer's SQL: the committed chain head (a plain read: it never
waits for the writer's lock), the stored hash of one batch, and the copy of
each checkpoint kept in ``ledger.checkpoints``."""

from __future__ import annotations

from datetime import datetime

from idlegrid.ledger.values import ChainHead


async def chain_head(conn) -> ChainHead:
    r = await conn.fetchrow("SELECT batch, last_seq, hash FROM ledger.chain_head")
    return ChainHead(r["batch"], r["last_seq"], bytes(r["hash"]))


async def batch_hash(conn, batch: int) -> tuple[bytes, int] | None:
    """(hash, last_seq) of a committed batch, or None when there is no such batch."""
    r = await conn.fetchrow("SELECT hash, last_seq FROM ledger.batches WHERE batch = $1", batch)
    return (bytes(r["hash"]), r["last_seq"]) if r is not None else None


async def record(conn, *, n: int, batch: int, last_seq: int, hash_: bytes, signed_at: datetime, key_id: str,
                 signature: bytes) -> None:
    await conn.execute(
        "INSERT INTO ledger.checkpoints (n, batch, last_seq, hash, signed_at, key_id, signature)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (n) DO NOTHING",
        n, batch, last_seq, hash_, signed_at, key_id, signature)
