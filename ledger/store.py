"""The ledger's SQL. Reads go straight to the pool; every write goes through
``commit_batch`` inside the writer's transaction."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from asyncpg.pgproto import pgproto

from idlegrid.ledger.codes import EXPIRED, POST
from idlegrid.ledger.engine import EXPIRED_STATE, OPEN, POSTED, VOIDED, Account, Hold, Stored

# asyncpg's own UUID type: built from bytes ten times faster than uuid.UUID,
# and encoded on a fast path.
U = pgproto.UUID


def U_opt(b: bytes):
    return pgproto.UUID(b) if b else None


def _b(u) -> bytes:
    return u.bytes if u is not None else b""


def _stored(r) -> Stored:
    return Stored(
        id=r["id"].bytes, debit_account_id=r["dr"].bytes, credit_account_id=r["cr"].bytes, amount=r["amount"],
        pending_id=_b(r["pending_id"]), user_data=_b(r["user_data"]), timeout_s=r["timeout_s"],
        ledger=r["ledger"], code=r["code"], flags=r["flags"],
    )


@dataclass(slots=True)
class Loaded:
    """What a batch reads (and locks) before it applies its transfers."""

    head_batch: int
    last_seq: int
    prev_hash: bytes
    now: object
    accounts: dict[bytes, Account]
    stored: dict[bytes, Stored]
    failed: dict[bytes, int]
    holds: dict[bytes, Hold]


async def prepare(conn, ids: Iterable[bytes], pendings: Iterable[bytes], account_ids: Iterable[bytes],
                  micros) -> Loaded:
    """Locks the chain head and the accounts (in id order) and loads the
    transfers, resolutions, open holds and burned ids the batch refers to:
    one round trip (``ledger.prepare_batch``)."""
    pendings = list(pendings)
    rows = await conn.fetch("SELECT * FROM ledger.prepare_batch($1::uuid[], $2::uuid[], $3::uuid[])",
                            [U(i) for i in ids], [U(p) for p in pendings], [U(a) for a in account_ids])
    head = rows[0]
    if head["k"] != -1:
        raise RuntimeError("ledger.chain_head is missing")
    accounts: dict[bytes, Account] = {}
    stored: dict[bytes, Stored] = {}
    failed: dict[bytes, int] = {}
    resolved: dict[bytes, str] = {}
    open_: dict[bytes, object] = {}
    for r in rows[1:]:
        k = r["k"]
        if k == 4:
            accounts[r["id"].bytes] = Account(r["ledger"], r["flags"], r["x"], r["y"], r["z"], r["w"])
        elif k == 0:
            s = _stored(r)
            stored[s.id] = s
        elif k == 1:
            f = r["flags"]
            resolved[r["pending_id"].bytes] = POSTED if f & POST else (EXPIRED_STATE if f & EXPIRED else VOIDED)
        elif k == 2:
            open_[r["id"].bytes] = r["ts"]
        else:
            failed[r["id"].bytes] = r["code"]
    holds: dict[bytes, Hold] = {}
    for p in pendings:
        if p in resolved:
            holds[p] = Hold(resolved[p], None, in_db=False)
        elif p in open_:
            exp = open_[p]
            holds[p] = Hold(OPEN, micros(exp) if exp is not None else None, in_db=True)
    return Loaded(head["x"], head["y"], bytes(head["h"]), head["ts"], accounts, stored, failed, holds)


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
