"""Small helpers shared by the ledger tests: building accounts and transfers,
reading balances through the API, and running ``verify`` on the module's
database. To wait for something, use tests.harness.eventually."""

from __future__ import annotations

import os

import asyncpg

from idlegrid.ledger.audit import Report, verify
from idlegrid.ledger.v1 import ledger_pb2 as pb

DMNEC = pb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
CMNED = pb.ACCOUNT_FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS
LINKED = pb.TRANSFER_FLAG_LINKED
PENDING = pb.TRANSFER_FLAG_PENDING
POST = pb.TRANSFER_FLAG_POST_PENDING_TRANSFER
VOID = pb.TRANSFER_FLAG_VOID_PENDING_TRANSFER
EXPIRED = pb.TRANSFER_FLAG_EXPIRED
R = pb.CreateTransferResult
OK = pb.CREATE_TRANSFER_RESULT_OK
EXISTS = pb.CREATE_TRANSFER_RESULT_EXISTS


def new_id() -> bytes:
    return os.urandom(16)


def account(kind: int = pb.ACCOUNT_KIND_CONSUMER, flags: int = 0, ledger: int = 1) -> pb.Account:
    return pb.Account(id=new_id(), ledger=ledger, kind=kind, flags=flags)


def transfer(dr: bytes, cr: bytes, amount: int, *, flags: int = 0, ledger: int = 1, code: int = 1,
             timeout_s: int = 0, tid: bytes | None = None, user_data: bytes = b"") -> pb.Transfer:
    return pb.Transfer(id=tid or new_id(), debit_account_id=dr, credit_account_id=cr, amount=amount,
                       flags=flags, ledger=ledger, code=code, timeout_s=timeout_s, user_data=user_data)


def post(pending_id: bytes, amount: int, *, flags: int = 0, tid: bytes | None = None) -> pb.Transfer:
    return pb.Transfer(id=tid or new_id(), pending_id=pending_id, amount=amount, flags=POST | flags)


def void(pending_id: bytes, *, flags: int = 0, tid: bytes | None = None) -> pb.Transfer:
    return pb.Transfer(id=tid or new_id(), pending_id=pending_id, flags=VOID | flags)


def names(results) -> list[str]:
    """Result codes by name, for readable assertion failures."""
    return [R.Name(r).removeprefix("CREATE_TRANSFER_RESULT_") for r in results]


async def create_accounts(stub, *accounts: pb.Account) -> None:
    r = await stub.CreateAccounts(pb.CreateAccountsRequest(accounts=list(accounts)))
    assert list(r.results) == [pb.CREATE_ACCOUNT_RESULT_OK] * len(accounts), list(r.results)


async def create(stub, *transfers: pb.Transfer) -> list[str]:
    r = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=list(transfers)))
    return names(r.results)


async def balances(stub, *ids: bytes) -> list[tuple[int, int, int, int]]:
    """(debits_pending, debits_posted, credits_pending, credits_posted) per id, in order."""
    r = await stub.LookupAccounts(pb.LookupAccountsRequest(ids=list(ids)))
    by_id = {a.id: a for a in r.accounts}
    return [(by_id[i].debits_pending, by_id[i].debits_posted, by_id[i].credits_pending,
             by_id[i].credits_posted) for i in ids]


async def run_verify(db_url: str, *, clearing: bool = True) -> Report:
    """``clearing`` False: the ledger's own books only (no metering records to prove windows against)."""
    conn = await asyncpg.connect(db_url)
    try:
        return await verify(conn, clearing=clearing)
    finally:
        await conn.close()


async def row_counts(db_url: str) -> dict[str, int]:
    """Rows in every table that a write could touch."""
    conn = await asyncpg.connect(db_url)
    try:
        out = {}
        for table in ("transfers", "batches", "failed_transfers", "open_holds", "accounts"):
            out[table] = await conn.fetchval(f"SELECT count(*) FROM ledger.{table}")
        return out
    finally:
        await conn.close()


async def expiry_of(stub, account_id: bytes, pending_id: bytes) -> pb.Transfer | None:
    """The void that the expiry sweep created for ``pending_id``, found through
    the account's history (public API only), or None."""
    after = 0
    while True:
        r = await stub.GetAccountTransfers(pb.GetAccountTransfersRequest(
            account_id=account_id, after_seq=after, limit=1000))
        for t in r.transfers:
            if t.pending_id == pending_id and t.flags & EXPIRED:
                return t
        if not r.next_seq:
            return None
        after = r.next_seq
