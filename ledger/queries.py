"""Read-only queries: accounts, transfers, an account's history (paged)."""

from __future__ import annotations

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.common.errors import InvalidArgument, NotFound
from idlegrid.ledger.codes import BATCH_SIZE_MAX, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX
from idlegrid.ledger.store import U
from idlegrid.ledger.v1 import ledger_pb2 as pb

_ACCOUNT_COLS = ("id, ledger, kind, flags, user_data, name, debits_pending, debits_posted, "
                 "credits_pending, credits_posted, created_at")
_TRANSFER_COLS = ("seq, id, debit_account_id, credit_account_id, amount, pending_id, user_data, "
                  "timeout_s, ledger, code, flags, created_at")
SEQ_MAX = 2**63 - 1  # seq is a bigint
LEDGER_MAX = 2**32 - 1  # uint32 in the proto


def _ts(dt) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def _b(u) -> bytes:
    return u.bytes if u is not None else b""


def account_pb(r) -> pb.Account:
    return pb.Account(
        id=r["id"].bytes, ledger=r["ledger"], kind=r["kind"], flags=r["flags"],
        user_data=_b(r["user_data"]), name=r["name"] or "",
        debits_pending=r["debits_pending"], debits_posted=r["debits_posted"],
        credits_pending=r["credits_pending"], credits_posted=r["credits_posted"],
        created_at=_ts(r["created_at"]))


def transfer_pb(r) -> pb.Transfer:
    return pb.Transfer(
        id=r["id"].bytes, debit_account_id=r["debit_account_id"].bytes,
        credit_account_id=r["credit_account_id"].bytes, amount=r["amount"],
        pending_id=_b(r["pending_id"]), user_data=_b(r["user_data"]), timeout_s=r["timeout_s"],
        ledger=r["ledger"], code=r["code"], flags=r["flags"], seq=r["seq"],
        created_at=_ts(r["created_at"]))


def check_id(b: bytes, what: str) -> None:
    if len(b) != 16:
        raise InvalidArgument(f"{what} must be 16 bytes, got {len(b)}")


def _ids(ids, what: str) -> list:
    if not 1 <= len(ids) <= BATCH_SIZE_MAX:
        raise InvalidArgument(f"{what}: between 1 and {BATCH_SIZE_MAX} ids, got {len(ids)}")
    for i in ids:
        check_id(i, what)
    return [U(i) for i in ids]


def _after(after_seq: int) -> int:
    if after_seq > SEQ_MAX:
        raise InvalidArgument(f"after_seq must be at most {SEQ_MAX}, got {after_seq}")
    return after_seq


def _limit(limit: int) -> int:
    if limit == 0:
        return PAGE_SIZE_DEFAULT
    if limit > PAGE_SIZE_MAX:
        raise InvalidArgument(f"limit must be at most {PAGE_SIZE_MAX}, got {limit}")
    return limit


async def lookup_accounts(pool: asyncpg.Pool, ids) -> list[pb.Account]:
    rows = await pool.fetch(f"SELECT {_ACCOUNT_COLS} FROM ledger.accounts WHERE id = ANY($1::uuid[])",
                            _ids(ids, "ids"))
    by_id = {r["id"].bytes: r for r in rows}
    return [account_pb(by_id[i]) for i in dict.fromkeys(ids) if i in by_id]


async def lookup_transfers(pool: asyncpg.Pool, ids) -> list[pb.Transfer]:
    rows = await pool.fetch(f"SELECT {_TRANSFER_COLS} FROM ledger.transfers WHERE id = ANY($1::uuid[])",
                            _ids(ids, "ids"))
    by_id = {r["id"].bytes: r for r in rows}
    return [transfer_pb(by_id[i]) for i in dict.fromkeys(ids) if i in by_id]


async def account_by_name(pool: asyncpg.Pool, name: str, ledger: int) -> pb.Account:
    if ledger > LEDGER_MAX:  # no account can be on it
        raise NotFound(f"no account named {name!r} on ledger {ledger}")
    r = await pool.fetchrow(f"SELECT {_ACCOUNT_COLS} FROM ledger.accounts WHERE ledger = $1 AND name = $2",
                            ledger, name)
    if r is None:
        raise NotFound(f"no account named {name!r} on ledger {ledger}")
    return account_pb(r)


def _page_sql(select: str, reversed_: bool, after_seq: int) -> str:
    if reversed_:
        cond = "AND seq < $2" if after_seq else "AND $2 = 0"
        return f"{select} {cond} ORDER BY seq DESC LIMIT $3"
    return f"{select} AND seq > $2 ORDER BY seq LIMIT $3"


async def account_transfers(pool: asyncpg.Pool, account_id: bytes, after_seq: int, limit: int,
                            reversed_: bool) -> tuple[list[pb.Transfer], int]:
    check_id(account_id, "account_id")
    limit = _limit(limit)
    after_seq = _after(after_seq)
    # Two index range scans merged: debit side and credit side.
    sql = _page_sql(
        f"SELECT {_TRANSFER_COLS} FROM ledger.transfers WHERE (debit_account_id = $1 OR credit_account_id = $1)",
        reversed_, after_seq)
    rows = await pool.fetch(sql, U(account_id), after_seq, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return [transfer_pb(r) for r in rows], (rows[-1]["seq"] if more else 0)


async def account_balances(pool: asyncpg.Pool, account_id: bytes, after_seq: int, limit: int,
                           reversed_: bool) -> tuple[list[pb.AccountBalance], int]:
    check_id(account_id, "account_id")
    limit = _limit(limit)
    after_seq = _after(after_seq)
    sql = _page_sql(
        """SELECT seq, id, created_at, debit_account_id = $1 AS is_debit,
                  dr_debits_pending, dr_debits_posted, dr_credits_pending, dr_credits_posted,
                  cr_debits_pending, cr_debits_posted, cr_credits_pending, cr_credits_posted
             FROM ledger.transfers WHERE (debit_account_id = $1 OR credit_account_id = $1)""",
        reversed_, after_seq)
    rows = await pool.fetch(sql, U(account_id), after_seq, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    out = []
    for r in rows:
        p = "dr_" if r["is_debit"] else "cr_"
        out.append(pb.AccountBalance(
            seq=r["seq"], transfer_id=r["id"].bytes, created_at=_ts(r["created_at"]),
            debits_pending=r[p + "debits_pending"], debits_posted=r[p + "debits_posted"],
            credits_pending=r[p + "credits_pending"], credits_posted=r[p + "credits_posted"]))
    return out, (rows[-1]["seq"] if more else 0)
