"""The ledger's basic money flow through the real gRPC API."""

from __future__ import annotations

import os

import asyncpg
import grpc
import pytest

from idlegrid.ledger.audit import verify
from idlegrid.ledger.v1 import ledger_pb2 as pb


def acct(kind=pb.ACCOUNT_KIND_CONSUMER, flags=0) -> pb.Account:
    return pb.Account(id=os.urandom(16), ledger=1, kind=kind, flags=flags)


async def test_topup_reserve_settle_moves_exact_amounts_and_verifies(ledger, db_url):
    consumer = acct(flags=pb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS)
    provider = acct(pb.ACCOUNT_KIND_PROVIDER, pb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS)
    r = await ledger.CreateAccounts(pb.CreateAccountsRequest(accounts=[consumer, provider]))
    assert list(r.results) == [0, 0]
    top = await ledger.TopUp(pb.TopUpRequest(account_id=consumer.id, amount=10_000, idempotency_key="t1"))
    assert top.status == pb.OPERATION_STATUS_OK
    again = await ledger.TopUp(pb.TopUpRequest(account_id=consumer.id, amount=10_000, idempotency_key="t1"))
    assert again.status == pb.OPERATION_STATUS_ALREADY_APPLIED
    job = os.urandom(16)
    res = await ledger.Reserve(pb.ReserveRequest(job_id=job, consumer_account_id=consumer.id, amount=3_000, timeout_s=60))
    assert res.status == pb.OPERATION_STATUS_OK
    st = await ledger.Settle(pb.SettleRequest(job_id=job, provider_account_id=provider.id, cost=1_999, fee_bps=1000))
    assert st.status == pb.OPERATION_STATUS_OK
    assert (st.fee, st.provider_amount) == (199, 1_800)
    st2 = await ledger.Settle(pb.SettleRequest(job_id=job, provider_account_id=provider.id, cost=1_999, fee_bps=1000))
    assert st2.status == pb.OPERATION_STATUS_ALREADY_APPLIED
    accts = await ledger.LookupAccounts(pb.LookupAccountsRequest(ids=[consumer.id, provider.id]))
    c, p = accts.accounts
    assert (c.credits_posted, c.debits_posted, c.debits_pending) == (10_000, 1_999, 0)
    assert p.credits_posted == 1_800
    conn = await asyncpg.connect(db_url)
    try:
        rep = await verify(conn)
    finally:
        await conn.close()
    assert rep.ok, rep.problems


async def test_calls_without_the_service_token_are_refused(ledger_server):
    from idlegrid.common.channel import open_channel
    from idlegrid.ledger.v1 import ledger_pb2_grpc

    async with open_channel(f"127.0.0.1:{ledger_server.port}", token="wrong") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ledger_pb2_grpc.LedgerServiceStub(ch).LookupAccounts(pb.LookupAccountsRequest(ids=[os.urandom(16)]))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
