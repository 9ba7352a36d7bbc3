"""Helpers for the checkpoint tests: a ledger (real service, fresh database,
its own home) that signs checkpoints, what an attacker holding only the
database credential can do (rewrite rows, then recompute the hash chain
with the project's own chain code), and verify with or without the log."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from idlegrid.ledger import checkpoint_audit
from idlegrid.ledger.audit import Report, verify
from idlegrid.ledger.chain import GENESIS, batch_hash, micros, transfer_bytes
from idlegrid.ledger.checkpoint_settings import CheckpointSettings
from tests.harness.basics import make_config, new_database
from tests.harness.stack import Stack, start_stack


@dataclass
class Anchored:
    """A running ledger that signs checkpoints into ``home``."""

    stack: Stack
    db_url: str
    home: Path
    first_transfer: bytes = b""  # set by the test's fixture

    @property
    def checkpointer(self):
        return self.stack.ledger_srv.parts["checkpointer"]

    @property
    def log(self) -> Path:
        return self.home / "ledger-checkpoints.jsonl"

    def settings(self, **overrides) -> CheckpointSettings:
        return CheckpointSettings.from_env({}, home=self.home, embedded=True, **overrides)


async def start_anchored(pg_admin_url: str, home: Path) -> Anchored:
    """A ledger on a fresh database whose home is ``home`` (one-machine
    mode: the key pair is created there on first start)."""
    db_url = await new_database(pg_admin_url)
    stack = await start_stack(make_config(home), db_url, parts=("ledger",))
    return Anchored(stack, db_url, home)


async def run_verify(db_url: str, settings: CheckpointSettings | None = None, *,
                     now: datetime | None = None) -> Report:
    """verify on the database, with the checkpoint log read under ``settings`` (None: without it)."""
    anchors = checkpoint_audit.load(settings) if settings is not None else None
    if settings is not None:
        assert anchors is not None, "the public key was not found"
    conn = await asyncpg.connect(db_url)
    try:
        return await verify(conn, anchors=anchors, now=now)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def attacker(db_url: str):
    """A connection as someone holding the database credential (the owner):
    with the append-only triggers bypassed."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("SET session_replication_role = replica")
        yield conn
    finally:
        await conn.close()


async def recompute_chain(conn: asyncpg.Connection) -> None:
    """Rebuilds every batch's hash and prev_hash, and the chain head, from the
    transfers as they are now, with the project's own chain code."""
    prev = GENESIS
    head = (0, 0)
    for b in await conn.fetch("SELECT * FROM ledger.batches ORDER BY batch"):
        rows = await conn.fetch("SELECT * FROM ledger.transfers WHERE batch = $1 ORDER BY seq", b["batch"])
        h = batch_hash(prev, b["batch"], b["first_seq"], b["last_seq"], micros(b["committed_at"]), [
            transfer_bytes(t["seq"], t["id"].bytes, t["debit_account_id"].bytes, t["credit_account_id"].bytes,
                           t["amount"], t["pending_id"].bytes if t["pending_id"] else b"",
                           t["user_data"].bytes if t["user_data"] else b"", t["timeout_s"], t["ledger"],
                           t["code"], t["flags"]) for t in rows])
        await conn.execute("UPDATE ledger.batches SET prev_hash = $2, hash = $3 WHERE batch = $1", b["batch"], prev, h)
        prev, head = h, (b["batch"], b["last_seq"])
    await conn.execute("UPDATE ledger.chain_head SET batch = $1, last_seq = $2, hash = $3", *head, prev)


async def shrink_transfer(conn: asyncpg.Connection, transfer_id: bytes, new_amount: int) -> None:
    """Lowers a posted, unflagged transfer's amount and every stored number
    that follows from it (both accounts' balances and balance history, the
    totals), as an attacker covering their tracks would. Assumes neither
    account moves money in any later transfer."""
    import uuid

    t = await conn.fetchrow("SELECT * FROM ledger.transfers WHERE id = $1", uuid.UUID(bytes=transfer_id))
    delta = t["amount"] - new_amount
    await conn.execute("UPDATE ledger.transfers SET amount = $2, dr_debits_posted = dr_debits_posted - $3,"
                       " cr_credits_posted = cr_credits_posted - $3 WHERE seq = $1", t["seq"], new_amount, delta)
    await conn.execute("UPDATE ledger.accounts SET debits_posted = debits_posted - $2 WHERE id = $1",
                       t["debit_account_id"], delta)
    await conn.execute("UPDATE ledger.accounts SET credits_posted = credits_posted - $2 WHERE id = $1",
                       t["credit_account_id"], delta)
    await conn.execute("UPDATE ledger.totals SET debits_posted = debits_posted - $2,"
                       " credits_posted = credits_posted - $2 WHERE ledger = $1", t["ledger"], delta)
