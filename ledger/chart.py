"""The chart of accounts: opening an account (idempotent by id: the same
fields again answer EXISTS) and the platform's own well-known accounts."""

from __future__ import annotations

import re

import asyncpg

from idlegrid.common.errors import InvalidArgument
from idlegrid.ledger.codes import (
    BATCH_SIZE_MAX,
    DEBITS_MUST_NOT_EXCEED_CREDITS,
    LEDGER_CREDITS,
    MAX_ID,
    ZERO_ID,
)
from idlegrid.ledger.ids import well_known_account
from idlegrid.ledger.store.new_accounts import insert_accounts
from idlegrid.ledger.v1 import ledger_pb2 as pb
from idlegrid.ledger.values import Account

A = pb.CreateAccountResult
_NAME = re.compile(r"^[\w.:@/+-]{1,128}$")

# name -> (kind, flags)
WELL_KNOWN = {
    "external:deposits": (pb.ACCOUNT_KIND_EXTERNAL, 0),
    "external:payouts": (pb.ACCOUNT_KIND_EXTERNAL, 0),
    "escrow:jobs": (pb.ACCOUNT_KIND_ESCROW, DEBITS_MUST_NOT_EXCEED_CREDITS),
    "platform:revenue": (pb.ACCOUNT_KIND_PLATFORM, DEBITS_MUST_NOT_EXCEED_CREDITS),
}


def _check(a: Account) -> int:
    """CREATE_ACCOUNT_RESULT_OK or the first error in the fields."""
    if len(a.id) != 16:
        return A.CREATE_ACCOUNT_RESULT_ID_MUST_BE_16_BYTES
    if a.id == ZERO_ID:
        return A.CREATE_ACCOUNT_RESULT_ID_MUST_NOT_BE_ZERO
    if a.id == MAX_ID:
        return A.CREATE_ACCOUNT_RESULT_ID_MUST_NOT_BE_INT_MAX
    if a.ledger == 0:
        return A.CREATE_ACCOUNT_RESULT_LEDGER_MUST_NOT_BE_ZERO
    if a.kind not in pb.AccountKind.values() or a.kind == pb.ACCOUNT_KIND_UNSPECIFIED:
        return A.CREATE_ACCOUNT_RESULT_KIND_MUST_BE_SET
    if a.flags & ~3:
        return A.CREATE_ACCOUNT_RESULT_FLAGS_UNKNOWN
    if a.flags == 3:
        return A.CREATE_ACCOUNT_RESULT_FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if a.debits_pending or a.debits_posted or a.credits_pending or a.credits_posted:
        return A.CREATE_ACCOUNT_RESULT_BALANCES_MUST_BE_ZERO
    if len(a.user_data) not in (0, 16):
        return A.CREATE_ACCOUNT_RESULT_USER_DATA_MUST_BE_16_BYTES
    if a.name and not _NAME.match(a.name):
        return A.CREATE_ACCOUNT_RESULT_NAME_INVALID
    return A.CREATE_ACCOUNT_RESULT_OK


def _same(a: Account, b: Account) -> bool:
    return (a.ledger, a.kind, a.flags, a.user_data, a.name) == (b.ledger, b.kind, b.flags, b.user_data, b.name)


async def create_accounts(pool: asyncpg.Pool, accounts: list[Account]) -> list[int]:
    """One CreateAccountResult per account; the valid ones are created in one transaction."""
    if not 1 <= len(accounts) <= BATCH_SIZE_MAX:
        raise InvalidArgument(f"accounts: between 1 and {BATCH_SIZE_MAX} items, got {len(accounts)}")
    results = [_check(a) for a in accounts]
    todo = [i for i, r in enumerate(results) if r == A.CREATE_ACCOUNT_RESULT_OK]
    if not todo:
        return results
    taken = await insert_accounts(pool, [accounts[i] for i in todo])
    for i, t in zip(todo, taken, strict=True):
        if t is None:
            continue
        if t.existing is None:
            results[i] = A.CREATE_ACCOUNT_RESULT_NAME_TAKEN
        elif _same(t.existing, accounts[i]):
            results[i] = A.CREATE_ACCOUNT_RESULT_EXISTS
        else:
            results[i] = A.CREATE_ACCOUNT_RESULT_EXISTS_WITH_DIFFERENT_FIELDS
    return results


async def ensure_well_known(pool: asyncpg.Pool, ledger: int = LEDGER_CREDITS) -> dict[str, bytes]:
    """Creates the platform's own accounts for ``ledger`` (idempotent)."""
    ids = {name: well_known_account(name, ledger) for name in WELL_KNOWN}
    results = await create_accounts(pool, [
        Account(id=ids[name], ledger=ledger, kind=kind, flags=flags, name=name)
        for name, (kind, flags) in WELL_KNOWN.items()
    ])
    bad = [r for r in results if r not in (A.CREATE_ACCOUNT_RESULT_OK, A.CREATE_ACCOUNT_RESULT_EXISTS)]
    if bad:
        raise RuntimeError(f"well-known accounts conflict with existing ones: {bad}")
    return ids
