"""The books as ``ledger verify`` reads them: one read-only snapshot
(REPEATABLE READ) of the batches, every transfer in seq order (streamed), the
chain head, the accounts, the per-ledger totals and the open holds."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from idlegrid.ledger.store.uuids import b_opt
from idlegrid.ledger.values import Account, BatchRecord, ChainHead, StoredTransfer

FETCH_ROWS = 5000


@contextlib.asynccontextmanager
async def snapshot(conn: asyncpg.Connection) -> AsyncIterator[Books]:
    """The books at one instant: every read through the yielded ``Books``
    sees the same committed state."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        yield Books(conn)


class Books:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def batches(self) -> dict[int, BatchRecord]:
        rows = await self._conn.fetch("SELECT * FROM ledger.batches ORDER BY batch")
        return {r["batch"]: BatchRecord(r["batch"], r["first_seq"], r["last_seq"], bytes(r["prev_hash"]),
                                        bytes(r["hash"]), r["committed_at"]) for r in rows}

    async def transfers(self) -> AsyncIterator[StoredTransfer]:
        """Every transfer in seq order, with its batch and its balance history."""
        async for r in self._conn.cursor("SELECT * FROM ledger.transfers ORDER BY seq", prefetch=FETCH_ROWS):
            yield StoredTransfer(
                id=r["id"].bytes, debit_account_id=r["debit_account_id"].bytes,
                credit_account_id=r["credit_account_id"].bytes, amount=r["amount"],
                pending_id=b_opt(r["pending_id"]), user_data=b_opt(r["user_data"]), timeout_s=r["timeout_s"],
                ledger=r["ledger"], code=r["code"], flags=r["flags"], seq=r["seq"], batch=r["batch"],
                balances=(r["dr_debits_pending"], r["dr_debits_posted"], r["dr_credits_pending"],
                          r["dr_credits_posted"], r["cr_debits_pending"], r["cr_debits_posted"],
                          r["cr_credits_pending"], r["cr_credits_posted"]))

    async def chain_head(self) -> ChainHead:
        r = await self._conn.fetchrow("SELECT batch, last_seq, hash FROM ledger.chain_head")
        return ChainHead(r["batch"], r["last_seq"], bytes(r["hash"]))

    async def accounts(self) -> list[Account]:
        return [Account(id=r["id"].bytes, ledger=r["ledger"], kind=r["kind"], flags=r["flags"],
                        user_data=b_opt(r["user_data"]), name=r["name"] or "",
                        debits_pending=r["debits_pending"], debits_posted=r["debits_posted"],
                        credits_pending=r["credits_pending"], credits_posted=r["credits_posted"],
                        created_at=r["created_at"])
                for r in await self._conn.fetch("SELECT * FROM ledger.accounts")]

    async def totals(self) -> dict[int, list[int]]:
        """Per ledger, the totals table's [debits_pending, debits_posted,
        credits_pending, credits_posted]."""
        return {r["ledger"]: [r["debits_pending"], r["debits_posted"], r["credits_pending"], r["credits_posted"]]
                for r in await self._conn.fetch("SELECT * FROM ledger.totals")}

    async def open_holds(self) -> set[bytes]:
        return {r["pending_id"].bytes for r in await self._conn.fetch("SELECT pending_id FROM ledger.open_holds")}
