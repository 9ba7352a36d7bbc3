"""The writer's SQL: one round trip to load and lock what a batch refers to
(``ledger.prepare_batch``), one to write it (``ledger.apply_batch``), both
inside the writer's transaction; and the expiry sweep's read."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from idlegrid.ledger.chain import micros
from idlegrid.ledger.store.uuids import U, b_opt, u_opt
from idlegrid.ledger.values import AccountState, StoredTransfer

_PREPARE = ("SELECT * FROM ledger.prepare_batch("
            "transfer_ids => $1::uuid[], pending_ids => $2::uuid[], account_ids => $3::uuid[])")
_APPLY = ("SELECT ledger.apply_batch(batch => $1, prev_hash => $2, hash => $3, committed_at => $4,"
          " transfers => $5, accounts => $6, holds_opened => $7, holds_closed => $8, failed => $9,"
          " totals => $10)")


@dataclass(slots=True)
class Loaded:
    """What a batch reads (and locks) before it applies its transfers."""

    head_batch: int
    last_seq: int
    prev_hash: bytes
    now: datetime  # the database clock, read after the locks
    accounts: dict[bytes, AccountState]
    stored: dict[bytes, StoredTransfer]  # transfers with one of the ids, by id
    resolved: dict[bytes, int]  # pending id -> flags of the transfer that resolved it
    open_until: dict[bytes, int | None]  # open hold -> expiry (µs since the epoch) or None
    failed: dict[bytes, int]  # burned id -> the result that burned it


async def prepare(conn, *, transfer_ids: Iterable[bytes], pending_ids: Iterable[bytes],
                  account_ids: Iterable[bytes]) -> Loaded:
    """Locks the chain head and the accounts (in id order) and loads the
    transfers, resolutions, open holds and burned ids the batch refers to."""
    r = await conn.fetchrow(_PREPARE, [U(i) for i in transfer_ids], [U(p) for p in pending_ids],
                            [U(a) for a in account_ids])
    return Loaded(
        head_batch=r["head_batch"], last_seq=r["head_last_seq"], prev_hash=bytes(r["head_hash"]),
        now=r["db_now"],
        accounts={a["id"].bytes: AccountState(a["ledger"], a["flags"], a["debits_pending"], a["debits_posted"],
                                              a["credits_pending"], a["credits_posted"])
                  for a in r["accounts"]},
        stored={t["id"].bytes: StoredTransfer(
            id=t["id"].bytes, debit_account_id=t["debit_account_id"].bytes,
            credit_account_id=t["credit_account_id"].bytes, amount=t["amount"],
            pending_id=b_opt(t["pending_id"]), user_data=b_opt(t["user_data"]), timeout_s=t["timeout_s"],
            ledger=t["ledger"], code=t["code"], flags=t["flags"]) for t in r["transfers"]},
        resolved={x["pending_id"].bytes: x["flags"] for x in r["resolutions"]},
        open_until={h["pending_id"].bytes: micros(h["expires_at"]) if h["expires_at"] is not None else None
                    for h in r["open_holds"]},
        failed={f["id"].bytes: f["result"] for f in r["failed"]},
    )


async def commit_batch(conn, *, batch: int, prev_hash: bytes, hash_: bytes, now: datetime,
                       created: list[StoredTransfer], accounts: list[tuple[bytes, AccountState]],
                       holds_opened: list[tuple[bytes, datetime | None]], holds_closed: list[bytes],
                       burned: dict[bytes, int], totals: dict[int, list[int]]) -> None:
    """Writes one batch (inside the caller's transaction) in one round trip:
    one row per created transfer, changed account, opened hold, burned id and
    ledger; the ids of the holds closed."""
    await conn.execute(
        _APPLY, batch, prev_hash, hash_, now,
        [(s.seq, U(s.id), U(s.debit_account_id), U(s.credit_account_id), s.amount, u_opt(s.pending_id),
          u_opt(s.user_data), s.timeout_s, s.ledger, s.code, s.flags, *s.balances) for s in created],
        [(U(k), a.dp, a.dpo, a.cp, a.cpo) for k, a in accounts],
        [(U(p), e) for p, e in holds_opened],
        [U(p) for p in holds_closed],
        [(U(k), r) for k, r in burned.items()],
        [(ledger, *d) for ledger, d in totals.items()],
    )


async def expired_holds(conn, limit: int) -> list[bytes]:
    """The open holds whose timeout passed by the database clock, oldest first."""
    rows = await conn.fetch(
        "SELECT pending_id FROM ledger.open_holds WHERE expires_at <= clock_timestamp()"
        " ORDER BY expires_at LIMIT $1", limit)
    return [r["pending_id"].bytes for r in rows]
