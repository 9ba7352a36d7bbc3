"""Metering: idempotent usage records, queries, and exactly-once settlement."""

from __future__ import annotations

import os

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.ledger.audit import verify
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering.v1 import metering_pb2 as pb
from tests.harness import eventually
from tests.harness.stack import start_stack


@pytest.fixture(scope="module")
async def stack(config, db_url):
    """(ledger stub, metering stub, running metering) of a ledger and metering stack."""
    s = await start_stack(config, db_url, parts=("ledger", "metering"))
    yield s.ledger, s.metering, s.metering_srv
    await s.stop()


async def _accounts(ledger, credits: int):
    consumer, provider = os.urandom(16), os.urandom(16)
    flags = lpb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
    await ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[
        lpb.Account(id=consumer, ledger=1, kind=lpb.ACCOUNT_KIND_CONSUMER, flags=flags),
        lpb.Account(id=provider, ledger=1, kind=lpb.ACCOUNT_KIND_PROVIDER, flags=flags)]))
    await ledger.TopUp(lpb.TopUpRequest(account_id=consumer, amount=credits, idempotency_key=consumer.hex()))
    return consumer, provider


def _record(job, consumer, provider, cost, outcome=pb.OUTCOME_COMPLETED, model="m") -> pb.UsageRecord:
    now = Timestamp()
    now.GetCurrentTime()
    return pb.UsageRecord(job_id=job, consumer_account_id=consumer, provider_account_id=provider,
                          provider_id="p1", node_id="n1", model=model, prompt_tokens=10, completion_tokens=5,
                          node_prompt_tokens=10, node_completion_tokens=5, duration_ms=12,
                          price_input_per_mtok=1000, price_output_per_mtok=2000, cost_micros=cost,
                          outcome=outcome, started_at=now, finished_at=now)


async def _wait_settled(metering, job) -> pb.UsageRecord:
    async def done() -> pb.UsageRecord | None:
        r = await metering.GetJob(pb.GetJobRequest(job_id=job))
        return r if r.settlement != pb.SETTLEMENT_STATE_PENDING else None

    return await eventually(done, what="the job's settlement")


async def _verify(db_url):
    conn = await asyncpg.connect(db_url)
    try:
        return await verify(conn)
    finally:
        await conn.close()


async def test_recorded_usage_is_settled_once_with_the_fee_split(stack, db_url):
    ledger, metering, _ = stack
    consumer, provider = await _accounts(ledger, 100_000)
    job = os.urandom(16)
    r = await ledger.Reserve(lpb.ReserveRequest(job_id=job, consumer_account_id=consumer, amount=5_000, timeout_s=60))
    assert r.status == lpb.OPERATION_STATUS_OK
    record = _record(job, consumer, provider, 1_234)
    rec = await metering.RecordUsage(pb.RecordUsageRequest(record=record))
    assert rec.created
    again = await metering.RecordUsage(pb.RecordUsageRequest(record=record))
    assert not again.created
    done = await _wait_settled(metering, job)
    assert done.settlement == pb.SETTLEMENT_STATE_SETTLED
    assert done.fee_micros + done.provider_micros == 1_234
    accts = (await ledger.LookupAccounts(lpb.LookupAccountsRequest(ids=[consumer, provider]))).accounts
    assert accts[0].debits_posted == 1_234 and accts[0].debits_pending == 0
    assert accts[1].credits_posted == done.provider_micros
    assert (await _verify(db_url)).ok


async def test_a_different_record_for_the_same_job_is_a_conflict(stack):
    ledger, metering, _ = stack
    consumer, provider = await _accounts(ledger, 10_000)
    job = os.urandom(16)
    await metering.RecordUsage(pb.RecordUsageRequest(record=_record(job, consumer, provider, 0, pb.OUTCOME_FAILED)))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await metering.RecordUsage(pb.RecordUsageRequest(record=_record(job, consumer, provider, 7)))
    assert e.value.code() == grpc.StatusCode.ABORTED


@pytest.mark.parametrize("mutate, what", [
    (lambda r: r.ClearField("job_id"), "job_id"),
    (lambda r: setattr(r, "model", ""), "model"),
    (lambda r: setattr(r, "outcome", 0), "outcome"),
    (lambda r: (setattr(r, "outcome", pb.OUTCOME_FAILED), setattr(r, "cost_micros", 5)), "failed"),
    (lambda r: r.ClearField("provider_account_id"), "provider_account_id"),
    (lambda r: setattr(r, "prompt_tokens", 10**13), "prompt_tokens"),
    (lambda r: setattr(r, "node_id", "x" * 200), "node_id"),
])
async def test_bad_records_are_refused_and_nothing_is_stored(stack, mutate, what):
    _, metering, _ = stack
    job = os.urandom(16)
    rec = _record(job, os.urandom(16), os.urandom(16), 10)
    mutate(rec)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await metering.RecordUsage(pb.RecordUsageRequest(record=rec))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
    if len(rec.job_id) == 16:
        with pytest.raises(grpc.aio.AioRpcError) as e2:
            await metering.GetJob(pb.GetJobRequest(job_id=rec.job_id))
        assert e2.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_failed_job_releases_its_hold(stack):
    ledger, metering, _ = stack
    consumer, provider = await _accounts(ledger, 10_000)
    job = os.urandom(16)
    await ledger.Reserve(lpb.ReserveRequest(job_id=job, consumer_account_id=consumer, amount=4_000, timeout_s=60))
    await metering.RecordUsage(pb.RecordUsageRequest(record=_record(job, consumer, b"", 0, pb.OUTCOME_FAILED)))
    done = await _wait_settled(metering, job)
    assert done.settlement == pb.SETTLEMENT_STATE_RELEASED
    c = (await ledger.LookupAccounts(lpb.LookupAccountsRequest(ids=[consumer]))).accounts[0]
    assert (c.debits_pending, c.debits_posted) == (0, 0)


async def test_usage_queries_page_and_aggregate_per_consumer_and_model(stack):
    ledger, metering, _ = stack
    consumer, provider = await _accounts(ledger, 1_000_000)
    for i in range(5):
        job = os.urandom(16)
        await ledger.Reserve(lpb.ReserveRequest(job_id=job, consumer_account_id=consumer, amount=1_000, timeout_s=60))
        await metering.RecordUsage(pb.RecordUsageRequest(
            record=_record(job, consumer, provider, 100 + i, model="a" if i % 2 else "b")))
    f = pb.UsageFilter(consumer_account_id=consumer)
    seen, token = [], ""
    while True:
        page = await metering.ListUsage(pb.ListUsageRequest(filter=f, limit=2, page_token=token))
        seen.extend(page.records)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 5 and len({r.job_id for r in seen}) == 5
    agg = await metering.GetUsage(pb.GetUsageRequest(filter=f, bucket_s=3600, group_by=pb.GROUP_BY_MODEL))
    by_model = {b.key: b for b in agg.buckets}
    assert by_model["a"].jobs + by_model["b"].jobs == 5
    assert sum(b.cost_micros for b in agg.buckets) == sum(100 + i for i in range(5))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await metering.ListUsage(pb.ListUsageRequest(filter=f, page_token="!!"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_settlement_applied_before_a_crash_is_not_applied_twice(stack, db_url):
    """The ledger applied the settlement but metering died before marking it:
    the retry answers ALREADY_APPLIED and the job is settled exactly once."""
    ledger, metering, _ = stack
    consumer, provider = await _accounts(ledger, 100_000)
    job = os.urandom(16)
    await ledger.Reserve(lpb.ReserveRequest(job_id=job, consumer_account_id=consumer, amount=5_000, timeout_s=60))
    first = await ledger.Settle(lpb.SettleRequest(job_id=job, provider_account_id=provider, cost=999, fee_bps=1000))
    assert first.status == lpb.OPERATION_STATUS_OK
    await metering.RecordUsage(pb.RecordUsageRequest(record=_record(job, consumer, provider, 999)))
    done = await _wait_settled(metering, job)
    assert done.settlement == pb.SETTLEMENT_STATE_SETTLED
    c = (await ledger.LookupAccounts(lpb.LookupAccountsRequest(ids=[consumer]))).accounts[0]
    assert c.debits_posted == 999
    assert (await _verify(db_url)).ok
