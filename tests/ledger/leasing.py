"""Helpers for the lease and clearing tests: funded consumers, providers,
leases opened through the API, and window requests."""

from __future__ import annotations

import os

from idlegrid.ledger.v1 import ledger_pb2 as pb
from tests.ledger.support import run_verify

DMNEC = pb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
S = pb.OperationStatus


def prefix() -> bytes:
    return os.urandom(16)


async def well_known(ledger, name: str) -> bytes:
    return (await ledger.ResolveAccount(pb.ResolveAccountRequest(name=name))).account.id


async def consumer(ledger, balance: int) -> bytes:
    c = os.urandom(16)
    await ledger.CreateAccounts(pb.CreateAccountsRequest(accounts=[
        pb.Account(id=c, ledger=1, kind=pb.ACCOUNT_KIND_CONSUMER, flags=DMNEC)]))
    if balance:
        r = await ledger.TopUp(pb.TopUpRequest(account_id=c, amount=balance, idempotency_key=os.urandom(8).hex()))
        assert r.status == S.OPERATION_STATUS_OK
    return c


async def provider(ledger) -> bytes:
    p = os.urandom(16)
    await ledger.CreateAccounts(pb.CreateAccountsRequest(accounts=[
        pb.Account(id=p, ledger=1, kind=pb.ACCOUNT_KIND_PROVIDER, flags=DMNEC)]))
    return p


async def lease(ledger, who: bytes, amount: int, *, amount_min: int = 1) -> bytes:
    """A lease of exactly ``amount`` (the consumer must have it available)."""
    lid = os.urandom(16)
    r = await ledger.OpenLease(pb.OpenLeaseRequest(lease_id=lid, consumer_account_id=who, amount_min=amount_min,
                                                   amount_max=amount))
    assert (r.status, r.amount) == (S.OPERATION_STATUS_OK, amount), r
    return lid


def charge(lid: bytes, amount: int) -> pb.LeaseCharge:
    return pb.LeaseCharge(lease_id=lid, amount=amount, root_prefix=prefix())


def aggregate(to: bytes, amount: int, *, hold: bool = False, aid: bytes | None = None) -> pb.NodeAggregate:
    return pb.NodeAggregate(aggregate_id=aid or os.urandom(16), provider_account_id=to, amount=amount,
                            root_prefix=prefix(), hold=hold)


def window(leases, aggregates, fee: int, *, wid: bytes | None = None) -> pb.ClearWindowRequest:
    return pb.ClearWindowRequest(window_id=wid or os.urandom(16), leases=leases, aggregates=aggregates, fee=fee,
                                 fee_root_prefix=prefix())


async def books_ok(db_url: str) -> None:
    """``verify`` of the ledger's own books (no metering here to prove windows against)."""
    rep = await run_verify(db_url, clearing=False)
    assert rep.ok, rep.problems
