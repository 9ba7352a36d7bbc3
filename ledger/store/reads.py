"""Read-only queries: accounts and transfers by id, an account by name, and
an account's history (its transfers, or its balances after each), one page at
a time in seq order. Arguments arrive checked (``idlegrid.ledger.queries``)."""

from __future__ import annotations

from idlegrid.ledger.store.uuids import U, b_opt
from idlegrid.ledger.values import Account, BalanceRecord, StoredTransfer

_ACCOUNT_COLS = ("id, ledger, kind, flags, user_data, name, debits_pending, debits_posted, "
                 "credits_pending, credits_posted, created_at")
_TRANSFER_COLS = ("seq, id, debit_account_id, credit_account_id, amount, pending_id, user_data, "
                  "timeout_s, ledger, code, flags, created_at")
_OF_ACCOUNT = "WHERE (debit_account_id = $1 OR credit_account_id = $1)"  # two index range scans, merged
_BALANCE_COLS = """seq, id, created_at, debit_account_id = $1 AS is_debit,
    dr_debits_pending, dr_debits_posted, dr_credits_pending, dr_credits_posted,
    cr_debits_pending, cr_debits_posted, cr_credits_pending, cr_credits_posted"""


def _account(r) -> Account:
    return Account(
        id=r["id"].bytes, ledger=r["ledger"], kind=r["kind"], flags=r["flags"],
        user_data=b_opt(r["user_data"]), name=r["name"] or "",
        debits_pending=r["debits_pending"], debits_posted=r["debits_posted"],
        credits_pending=r["credits_pending"], credits_posted=r["credits_posted"],
        created_at=r["created_at"])


def _transfer(r) -> StoredTransfer:
    return StoredTransfer(
        id=r["id"].bytes, debit_account_id=r["debit_account_id"].bytes,
        credit_account_id=r["credit_account_id"].bytes, amount=r["amount"],
        pending_id=b_opt(r["pending_id"]), user_data=b_opt(r["user_data"]), timeout_s=r["timeout_s"],
        ledger=r["ledger"], code=r["code"], flags=r["flags"], seq=r["seq"], created_at=r["created_at"])


def _balance(r) -> BalanceRecord:
    p = "dr_" if r["is_debit"] else "cr_"
    return BalanceRecord(
        seq=r["seq"], transfer_id=r["id"].bytes, created_at=r["created_at"],
        debits_pending=r[p + "debits_pending"], debits_posted=r[p + "debits_posted"],
        credits_pending=r[p + "credits_pending"], credits_posted=r[p + "credits_posted"])


async def accounts_by_id(db, ids: list[bytes]) -> dict[bytes, Account]:
    rows = await db.fetch(f"SELECT {_ACCOUNT_COLS} FROM ledger.accounts WHERE id = ANY($1::uuid[])",
                          [U(i) for i in ids])
    return {r["id"].bytes: _account(r) for r in rows}


async def transfers_by_id(db, ids: list[bytes]) -> dict[bytes, StoredTransfer]:
    rows = await db.fetch(f"SELECT {_TRANSFER_COLS} FROM ledger.transfers WHERE id = ANY($1::uuid[])",
                          [U(i) for i in ids])
    return {r["id"].bytes: _transfer(r) for r in rows}


async def account_by_name(db, name: str, ledger: int) -> Account | None:
    r = await db.fetchrow(f"SELECT {_ACCOUNT_COLS} FROM ledger.accounts WHERE ledger = $1 AND name = $2",
                          ledger, name)
    return None if r is None else _account(r)


def _page_sql(select: str, *, reversed_: bool, after_seq: int) -> str:
    """``$2`` is the seq to continue after (0: from the start, or the end
    when reversed), ``$3`` the number of rows to read."""
    if reversed_:
        cond = "AND seq < $2" if after_seq else "AND $2 = 0"
        return f"{select} {cond} ORDER BY seq DESC LIMIT $3"
    return f"{select} AND seq > $2 ORDER BY seq LIMIT $3"


async def account_transfers(db, account_id: bytes, *, after_seq: int, rows_max: int,
                            reversed_: bool) -> list[StoredTransfer]:
    """Up to ``rows_max`` of the account's transfers after ``after_seq``."""
    sql = _page_sql(f"SELECT {_TRANSFER_COLS} FROM ledger.transfers {_OF_ACCOUNT}",
                    reversed_=reversed_, after_seq=after_seq)
    return [_transfer(r) for r in await db.fetch(sql, U(account_id), after_seq, rows_max)]


async def account_balances(db, account_id: bytes, *, after_seq: int, rows_max: int,
                           reversed_: bool) -> list[BalanceRecord]:
    """Up to ``rows_max`` of the account's balances, each right after one of
    its transfers after ``after_seq``."""
    sql = _page_sql(f"SELECT {_BALANCE_COLS} FROM ledger.transfers {_OF_ACCOUNT}",
                    reversed_=reversed_, after_seq=after_seq)
    return [_balance(r) for r in await db.fetch(sql, U(account_id), after_seq, rows_max)]
