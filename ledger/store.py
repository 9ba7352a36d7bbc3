"""The ledger's SQL. Reads go straight to the pool; every write goes through
``commit_batch`` inside the writer's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import asyncpg

from ledger.engine import OPEN, POSTED, VOIDED, EXPIRED_STATE, Account, Hold, Stored
from ledger.codes import EXPIRED, POST, VOID

_TRANSFER_COLS = ("id, debit_account_id, credit_account_id, amount, pending_id, user_data, "
                  "timeout_s, ledger, code, flags")

COPY_COLUMNS = (
    "seq", "id", "debit_account_id", "credit_account_id", "amount", "pending_id", "user_data",
    "timeout_s", "ledger", "code", "flags", "batch", "created_at",
    "dr_debits_pending", "dr_debits_posted", "dr_credits_pending", "dr_credits_posted",
    "cr_debits_pending", "cr_debits_posted", "cr_credits_pending", "cr_credits_posted",
)

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

_LOCK_ACCOUNTS = """
SELECT id, ledger, flags, debits_pending, debits_posted, credits_pending, credits_posted
  FROM ledger.accounts WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
"""


def U(b: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=b)


def U_opt(b: bytes) -> uuid.UUID | None:
    return uuid.UUID(bytes=b) if b else None


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


async def lock_accounts(conn, ids: Iterable[bytes]) -> dict[bytes, Account]:
    rows = await conn.fetch(_LOCK_ACCOUNTS, [U(i) for i in sorted(set(ids))])
    return {
        r["id"].bytes: Account(r["ledger"], r["flags"], r["debits_pending"], r["debits_posted"],
                               r["credits_pending"], r["credits_posted"])
        for r in rows
    }


async def commit_batch(conn, *, batch: int, created: list[Stored], now, prev_hash: bytes,
                       hash_: bytes, accounts: list[tuple[bytes, Account]],
                       holds_opened: list[tuple[bytes, object]], holds_closed: list[bytes],
                       burned: dict[bytes, int], totals: dict[int, list[int]]) -> None:
    """Writes one batch (inside the caller's transaction)."""
    if created:
        first, last = created[0].seq, created[-1].seq
        await conn.execute(
            "INSERT INTO ledger.batches (batch, first_seq, last_seq, prev_hash, hash, committed_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)", batch, first, last, prev_hash, hash_, now)
        await conn.copy_records_to_table(
            "transfers", schema_name="ledger", columns=COPY_COLUMNS,
            records=[
                (s.seq, U(s.id), U(s.debit_account_id), U(s.credit_account_id), s.amount,
                 U_opt(s.pending_id), U_opt(s.user_data), s.timeout_s, s.ledger, s.code, s.flags,
                 batch, now, *s.balances)
                for s in created
            ],
        )
        await conn.execute(
            "UPDATE ledger.chain_head SET batch = $1, last_seq = $2, hash = $3", batch, last, hash_)
    if accounts:
        await conn.execute(
            """UPDATE ledger.accounts a SET debits_pending = u.dp, debits_posted = u.dpo,
                   credits_pending = u.cp, credits_posted = u.cpo
               FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])
                    AS u(id, dp, dpo, cp, cpo)
               WHERE a.id = u.id""",
            [U(k) for k, _ in accounts], [a.dp for _, a in accounts], [a.dpo for _, a in accounts],
            [a.cp for _, a in accounts], [a.cpo for _, a in accounts])
    if holds_opened:
        await conn.execute(
            "INSERT INTO ledger.open_holds (pending_id, expires_at)"
            " SELECT * FROM unnest($1::uuid[], $2::timestamptz[])",
            [U(p) for p, _ in holds_opened], [e for _, e in holds_opened])
    if holds_closed:
        await conn.execute("DELETE FROM ledger.open_holds WHERE pending_id = ANY($1::uuid[])",
                           [U(p) for p in holds_closed])
    if burned:
        await conn.execute(
            "INSERT INTO ledger.failed_transfers (id, result)"
            " SELECT * FROM unnest($1::uuid[], $2::smallint[]) ON CONFLICT DO NOTHING",
            [U(k) for k in burned], list(burned.values()))
    for ledger_, (dp, dpo, cp, cpo) in totals.items():
        await conn.execute(
            """INSERT INTO ledger.totals AS t (ledger, debits_pending, debits_posted, credits_pending, credits_posted)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (ledger) DO UPDATE SET
                 debits_pending = t.debits_pending + EXCLUDED.debits_pending,
                 debits_posted = t.debits_posted + EXCLUDED.debits_posted,
                 credits_pending = t.credits_pending + EXCLUDED.credits_pending,
                 credits_posted = t.credits_posted + EXCLUDED.credits_posted""",
            ledger_, dp, dpo, cp, cpo)


async def expired_holds(conn, limit: int) -> list[bytes]:
    rows = await conn.fetch(
        "SELECT pending_id FROM ledger.open_holds WHERE expires_at <= clock_timestamp()"
        " ORDER BY expires_at LIMIT $1", limit)
    return [r["pending_id"].bytes for r in rows]
