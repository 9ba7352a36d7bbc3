"""The read side: checks a lookup's or a history page's arguments, reads
through the store, and pages (a page reads one row more than it returns, to
know whether another page follows)."""

from __future__ import annotations

import asyncpg

from idlegrid.common.errors import InvalidArgument, NotFound
from idlegrid.common.paging import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX
from idlegrid.ledger.codes import BATCH_SIZE_MAX
from idlegrid.ledger.store import reads
from idlegrid.ledger.values import Account, BalanceRecord, Page, StoredTransfer

SEQ_MAX = 2**63 - 1  # seq is a bigint
LEDGER_MAX = 2**32 - 1  # uint32 in the proto


def check_id(b: bytes, what: str) -> None:
    if len(b) != 16:
        raise InvalidArgument(f"{what} must be 16 bytes, got {len(b)}")


def _ids(ids: list[bytes], what: str) -> list[bytes]:
    if not 1 <= len(ids) <= BATCH_SIZE_MAX:
        raise InvalidArgument(f"{what}: between 1 and {BATCH_SIZE_MAX} ids, got {len(ids)}")
    for i in ids:
        check_id(i, what)
    return ids


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


async def lookup_accounts(pool: asyncpg.Pool, ids: list[bytes]) -> list[Account]:
    """The accounts found, in the order asked (each once)."""
    by_id = await reads.accounts_by_id(pool, _ids(ids, "ids"))
    return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]


async def lookup_transfers(pool: asyncpg.Pool, ids: list[bytes]) -> list[StoredTransfer]:
    """The transfers found, in the order asked (each once)."""
    by_id = await reads.transfers_by_id(pool, _ids(ids, "ids"))
    return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]


async def account_by_name(pool: asyncpg.Pool, name: str, ledger: int) -> Account:
    found = None if ledger > LEDGER_MAX else await reads.account_by_name(pool, name, ledger)
    if found is None:
        raise NotFound(f"no account named {name!r} on ledger {ledger}")
    return found


def _page(rows: list, limit: int) -> Page:
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, rows[-1].seq if more else 0)


async def account_transfers(pool: asyncpg.Pool, account_id: bytes, *, after_seq: int, limit: int,
                            reversed_: bool) -> Page[StoredTransfer]:
    check_id(account_id, "account_id")
    limit = _limit(limit)
    rows = await reads.account_transfers(pool, account_id, after_seq=_after(after_seq), rows_max=limit + 1,
                                         reversed_=reversed_)
    return _page(rows, limit)


async def account_balances(pool: asyncpg.Pool, account_id: bytes, *, after_seq: int, limit: int,
                           reversed_: bool) -> Page[BalanceRecord]:
    check_id(account_id, "account_id")
    limit = _limit(limit)
    rows = await reads.account_balances(pool, account_id, after_seq=_after(after_seq), rows_max=limit + 1,
                                        reversed_=reversed_)
    return _page(rows, limit)
