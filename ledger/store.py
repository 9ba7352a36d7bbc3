"""The ledger's SQL. Reads go straight to the pool; every write goes through
``commit_batch`` inside the writer's transaction."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg
from asyncpg.pgproto import pgproto

from ledger.engine import OPEN, POSTED, VOIDED, EXPIRED_STATE, Account, Hold, Stored
from ledger.codes import EXPIRED, POST, VOID

_TRANSFER_COLS = ("id, debit_account_id, credit_account_id, amount, pending_id, user_data, "
                  "timeout_s, ledger, code, flags")


# One round trip: the transfers with the batch's ids (and the pendings it
# references), the transfers that resolved those pendings, their open holds,
# and burned ids.
_LOOKUP = f"""
SELECT 0 AS k, {_TRANSFER_COLS}, NULL::timestamptz AS expires_at
  FROM ledger.transfers WHERE id = ANY($1::uuid[])
UNION ALL
SELECT 1, {_TRANSFER_COLS}, NULL FROM ledger.transfers WHERE pending_id = ANY($2::uuid[])
UNION ALL
SELECT 2, pending_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, expires_at
  FROM ledger.open_holds WHERE pending_id = ANY($2::uuid[])
UNION ALL
SELECT 3, id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, result, NULL, NULL
  FROM ledger.failed_transfers WHERE id = ANY($1::uuid[])
"""

# The accounts named by the batch and by the pending transfers it resolves,
# locked in one global order (by id): concurrent writers never deadlock.
_LOCK_ACCOUNTS = """
SELECT id, ledger, flags, debits_pending, debits_posted, credits_pending, credits_posted
  FROM ledger.accounts
 WHERE id = ANY($1::uuid[])
    OR id IN (SELECT debit_account_id FROM ledger.transfers WHERE id = ANY($2::uuid[])
              UNION ALL
              SELECT credit_account_id FROM ledger.transfers WHERE id = ANY($2::uuid[]))
 ORDER BY id FOR UPDATE
"""


# asyncpg's own UUID type: built from bytes ten times faster than uuid.UUID,
# and encoded on a fast path.
U = pgproto.UUID


def U_opt(b: bytes):
    return pgproto.UUID(b) if b else None


def _b(u) -> bytes:
    return u.bytes if u is not None else b""


def _stored(r) -> Stored:
    return Stored(
        id=r["id"].bytes, debit_account_id=r["debit_account_id"].bytes,
        credit_account_id=r["credit_account_id"].bytes, amount=r["amount"],
        pending_id=_b(r["pending_id"]), user_data=_b(r["user_data"]), timeout_s=r["timeout_s"],
        ledger=r["ledger"], code=r["code"], flags=r["flags"],
    )


async def lock_head(conn: asyncpg.Connection) -> tuple[int, int, bytes, object]:
    """Locks the chain head: (batch, last_seq, hash, now)."""
    r = await conn.fetchrow(
        "SELECT batch, last_seq, hash, clock_timestamp() AS now FROM ledger.chain_head FOR UPDATE"
    )
    return r["batch"], r["last_seq"], bytes(r["hash"]), r["now"]


async def load(conn, ids: Iterable[bytes], pending_ids: Iterable[bytes], micros) -> tuple[
        dict[bytes, Stored], dict[bytes, int], dict[bytes, Hold]]:
    pending_ids = list(pending_ids)
    rows = await conn.fetch(_LOOKUP, [U(i) for i in ids], [U(p) for p in pending_ids])
    stored: dict[bytes, Stored] = {}
    failed: dict[bytes, int] = {}
    resolved: dict[bytes, str] = {}
    open_: dict[bytes, object] = {}
    for r in rows:
        k = r["k"]
        if k == 0:
            s = _stored(r)
            stored[s.id] = s
        elif k == 1:
            f = r["flags"]
            state = POSTED if f & POST else (EXPIRED_STATE if f & EXPIRED else VOIDED)
            resolved[r["pending_id"].bytes] = state
        elif k == 2:
            open_[r["id"].bytes] = r["expires_at"]
        else:
            failed[r["id"].bytes] = r["code"]
    holds: dict[bytes, Hold] = {}
    for p in pending_ids:
        if p in resolved:
            holds[p] = Hold(resolved[p], None, in_db=False)
        elif p in open_:
            exp = open_[p]
            holds[p] = Hold(OPEN, micros(exp) if exp is not None else None, in_db=True)
    return stored, failed, holds


async def lock_accounts(conn, ids: Iterable[bytes], pending_ids: Iterable[bytes]) -> dict[bytes, Account]:
    rows = await conn.fetch(_LOCK_ACCOUNTS, [U(i) for i in ids], [U(p) for p in pending_ids])
    return {
        r["id"].bytes: Account(r["ledger"], r["flags"], r["debits_pending"], r["debits_posted"],
                               r["credits_pending"], r["credits_posted"])
        for r in rows
    }


_APPLY = "SELECT ledger.apply_batch(" + ", ".join(f"${i}" for i in range(1, 32)) + ")"


async def commit_batch(conn, *, batch: int, created: list[Stored], now, prev_hash: bytes,
                       hash_: bytes, accounts: list[tuple[bytes, Account]],
                       holds_opened: list[tuple[bytes, object]], holds_closed: list[bytes],
                       burned: dict[bytes, int], totals: dict[int, list[int]]) -> None:
    """Writes one batch (inside the caller's transaction) in one round trip."""
    balances: list[int] = []
    for s in created:
        balances.extend(s.balances)
    await conn.execute(
        _APPLY, batch, prev_hash, hash_, now,
        [s.seq for s in created], [U(s.id) for s in created],
        [U(s.debit_account_id) for s in created], [U(s.credit_account_id) for s in created],
        [s.amount for s in created], [U_opt(s.pending_id) for s in created],
        [U_opt(s.user_data) for s in created], [s.timeout_s for s in created],
        [s.ledger for s in created], [s.code for s in created], [s.flags for s in created], balances,
        [U(k) for k, _ in accounts], [a.dp for _, a in accounts], [a.dpo for _, a in accounts],
        [a.cp for _, a in accounts], [a.cpo for _, a in accounts],
        [U(p) for p, _ in holds_opened], [e for _, e in holds_opened], [U(p) for p in holds_closed],
        [U(k) for k in burned], list(burned.values()),
        list(totals), [t[0] for t in totals.values()], [t[1] for t in totals.values()],
        [t[2] for t in totals.values()], [t[3] for t in totals.values()],
    )


async def expired_holds(conn, limit: int) -> list[bytes]:
    rows = await conn.fetch(
        "SELECT pending_id FROM ledger.open_holds WHERE expires_at <= clock_timestamp()"
        " ORDER BY expires_at LIMIT $1", limit)
    return [r["pending_id"].bytes for r in rows]
