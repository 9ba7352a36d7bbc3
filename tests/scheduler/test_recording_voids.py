"""A usage record given up at its job's deadline (the job gets no answer) is
voided on a real metering: a zero-cost FAILED record takes its place, unless
a cut-off try stored the original after all (the void is refused: the
original stands). Either way the lease has exactly one record per job, so
CloseLease's count is exact and the lease clears at once, for exactly what
metering holds."""

from __future__ import annotations

import os
import time
import uuid

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.common.clearing import PICOS_PER_MICRO
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.scheduler.leases import Leases
from idlegrid.scheduler.recording import UsageRecorder, Written
from tests.harness import eventually
from tests.harness.books import consumer as new_consumer
from tests.harness.books import leases_cleared
from tests.harness.stack import start_stack

pytestmark = pytest.mark.slow  # real ledger and metering

PRICE = 10


@pytest.fixture(scope="module")
async def stack(config, db_url):
    s = await start_stack(config, db_url, parts=("ledger", "metering"))
    yield s
    await s.stop()


def _record(job: bytes, consumer: bytes, provider: bytes, lease_id: bytes) -> mpb.UsageRecord:
    now = Timestamp()
    now.FromMicroseconds(time.time_ns() // 1000)
    return mpb.UsageRecord(
        job_id=job, consumer_account_id=consumer, model="echo", provider_account_id=provider, provider_id="p",
        node_id="n", requests=1, price_per_request=PRICE, cost_micros=PRICE, cost_picos=PRICE * PICOS_PER_MICRO,
        lease_id=lease_id, outcome=mpb.OUTCOME_COMPLETED, started_at=now, finished_at=now, duration_ms=1)


async def test_a_given_up_record_is_voided_or_stands_and_the_lease_closes_with_the_exact_count(stack):
    consumer = await new_consumer(stack.ledger, 10**6)
    provider = os.urandom(16)
    r = await stack.ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[
        lpb.Account(id=provider, ledger=1, kind=lpb.ACCOUNT_KIND_PROVIDER)]))
    assert list(r.results) == [0]
    leases = Leases(stack.metering, window_s=600.0)
    recorder = UsageRecorder(stack.metering)
    far = time.monotonic() + 60
    landed, voided = os.urandom(16), os.urandom(16)
    reservations = {job: await leases.reserve(consumer, PRICE, deadline=far) for job in (landed, voided)}
    lease_id = reservations[landed].lease.lease_id
    assert reservations[voided].lease.lease_id == lease_id
    ended: dict[bytes, Written] = {}

    def on_done(job: bytes, cost_picos: int):
        def settle(how: Written) -> None:  # as the scheduler's jobs do
            ended[job] = how
            cost = cost_picos if how is Written.LANDED else 0
            leases.finish(reservations[job], cost, recorded=how in (Written.LANDED, Written.VOIDED))
        return settle

    records = {job: _record(job, consumer, provider, lease_id) for job in (landed, voided)}
    # A try cut off at the deadline stored this one after all.
    await stack.metering.RecordUsageBatch(mpb.RecordUsageBatchRequest(records=[records[landed]]))
    gone = time.monotonic() - 1  # both jobs' deadlines have passed: no answer for either
    answers = []
    for job in (landed, voided):
        recorder.admit()
        answers.append(recorder.record(records[job], deadline=gone,
                                       on_done=on_done(job, records[job].cost_picos)))
    assert [await a for a in answers] == [Written.GIVEN_UP, Written.GIVEN_UP]
    await recorder.drain()
    assert ended == {landed: Written.LANDED, voided: Written.VOIDED} and recorder.in_flight == 0

    stood = await stack.metering.GetJob(mpb.GetJobRequest(job_id=landed))
    assert stood.outcome == mpb.OUTCOME_COMPLETED and stood.cost_picos == PRICE * PICOS_PER_MICRO
    void = await stack.metering.GetJob(mpb.GetJobRequest(job_id=voided))
    assert (void.outcome, void.cost_micros, void.cost_picos, void.lease_id) == (mpb.OUTCOME_FAILED, 0, 0, lease_id)
    # The original of the voided job, landing late, is refused: it never counts.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stack.metering.RecordUsageBatch(mpb.RecordUsageBatchRequest(records=[records[voided]]))
    assert e.value.code() == grpc.StatusCode.ABORTED

    await leases.stop()  # CloseLease with its 2 jobs: metering holds exactly 2 records
    conn = await asyncpg.connect(stack.db_url)
    try:
        lid = uuid.UUID(bytes=lease_id)
        await eventually(lambda: conn.fetchval("SELECT jobs = 2 FROM metering.leases WHERE lease_id = $1", lid),
                         what="the lease closed with its 2 jobs")
        await leases_cleared(stack.db_url)
        assert await conn.fetchval("SELECT state FROM metering.leases WHERE lease_id = $1", lid) == 4  # CLEARED
    finally:
        await conn.close()
    c = (await stack.balances([consumer]))[0]
    assert (c.debits_posted, c.debits_pending) == (PRICE, 0)  # the record that stood, nothing for the void
