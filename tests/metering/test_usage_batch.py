"""Durable usage, group-committed: RecordUsageBatch and RecordUsage share one
writer (one INSERT of many rows per commit); batches are all or nothing and
idempotent by job id; records on a credit lease carry their exact cost and
are cleared with their lease, never settled per job."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from asyncpg.pgproto import pgproto
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering import store, usage
from idlegrid.metering.leases import LeaseState
from idlegrid.metering.v1 import metering_pb2 as pb
from tests.harness import eventually
from tests.harness.stack import start_stack

DMNEC = lpb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS


@pytest.fixture(scope="module")
async def stack(config, db_url):
    s = await start_stack(config, db_url, parts=("ledger", "metering"))
    yield s
    await s.stop()


@pytest.fixture(scope="module")
async def db(db_url):
    conn = await asyncpg.connect(db_url)
    yield conn
    await conn.close()


def _record(consumer: bytes, *, lease: bytes = b"", picos: int = 0, cost: int | None = None,
            job: bytes | None = None) -> pb.UsageRecord:
    now = Timestamp()
    now.GetCurrentTime()
    cost = -(-picos // 10**6) if cost is None else cost
    return pb.UsageRecord(job_id=job or os.urandom(16), consumer_account_id=consumer,
                          provider_account_id=os.urandom(16), provider_id="p", node_id="n", model="m",
                          prompt_tokens=20, completion_tokens=0, node_prompt_tokens=20, node_completion_tokens=0,
                          duration_ms=3, price_input_per_mtok=50_000, cost_micros=cost, cost_picos=picos,
                          lease_id=lease, outcome=pb.OUTCOME_COMPLETED, started_at=now, finished_at=now)


async def _open_lease_row(db, consumer: bytes, state: LeaseState = LeaseState.OPEN) -> bytes:
    """A lease as metering records it (the ledger's hold is not needed to take records)."""
    lease = os.urandom(16)
    await db.execute(
        """INSERT INTO metering.leases (lease_id, consumer_account_id, replica_id, amount_min, amount_max, amount,
                                        use_until, max_job_s, state, jobs, closed_at, cleared_at)
           VALUES ($1, $2, $3, 1, 1000, $4, $5, 60, $6, $7, $8, $9)""",
        pgproto.UUID(lease), pgproto.UUID(consumer), pgproto.UUID(os.urandom(16)),
        1000 if state in (LeaseState.OPEN, LeaseState.CLOSED, LeaseState.CLEARED) else 0, datetime.now(UTC) + timedelta(seconds=5), int(state),
        0 if state == LeaseState.CLOSED else None, datetime.now(UTC) if state == LeaseState.CLOSED else None,
        datetime.now(UTC) if state in (LeaseState.CLEARED, LeaseState.VOIDED) else None)
    return lease


async def _stored(db, jobs: list[bytes]) -> int:
    return await db.fetchval("SELECT count(*) FROM metering.usage WHERE job_id = ANY($1::uuid[])",
                             [pgproto.UUID(j) for j in jobs])


async def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value.code()


async def test_a_batch_is_stored_once_and_a_retry_says_not_created(stack, db):
    consumer = os.urandom(16)
    lease = await _open_lease_row(db, consumer)
    recs = [_record(consumer, lease=lease, picos=1_000_000 * i + 1) for i in range(5)]
    res = await stack.metering.RecordUsageBatch(pb.RecordUsageBatchRequest(records=recs))
    assert list(res.created) == [True] * 5
    again = await stack.metering.RecordUsageBatch(pb.RecordUsageBatchRequest(records=recs))
    assert list(again.created) == [False] * 5
    more = [_record(consumer, lease=lease, picos=7) for _ in range(2)]
    mixed = await stack.metering.RecordUsageBatch(pb.RecordUsageBatchRequest(records=recs[:2] + more))
    assert list(mixed.created) == [False, False, True, True]
    got = await stack.metering.GetJob(pb.GetJobRequest(job_id=recs[3].job_id))
    assert (got.lease_id, got.cost_picos, got.cost_micros) == (lease, 3_000_001, 4)
    assert not got.window_id and not got.aggregate_id


async def test_a_different_record_under_a_stored_job_fails_its_whole_batch(stack, db):
    consumer = os.urandom(16)
    lease = await _open_lease_row(db, consumer)
    first = _record(consumer, lease=lease, picos=5_000_000)
    await stack.metering.RecordUsage(pb.RecordUsageRequest(record=first))
    changed = _record(consumer, lease=lease, picos=6_000_000, job=first.job_id)
    fresh = _record(consumer, lease=lease, picos=1)
    code = await _code(stack.metering.RecordUsageBatch(pb.RecordUsageBatchRequest(records=[fresh, changed])))
    assert code == grpc.StatusCode.ABORTED
    assert await _stored(db, [fresh.job_id]) == 0


@pytest.mark.parametrize("mutate, what", [
    (lambda r: setattr(r, "cost_micros", r.cost_micros + 1), "cost_micros is not the ceiling of cost_picos"),
    (lambda r: (setattr(r, "cost_picos", 2**63), setattr(r, "cost_micros", 2**63 // 10**6)), "cost_picos >= 2^63"),
    (lambda r: setattr(r, "lease_id", b"\x01" * 15), "a short lease_id"),
    (lambda r: setattr(r, "window_id", os.urandom(16)), "window_id is metering's"),
    (lambda r: setattr(r, "model", ""), "no model"),
])
async def test_a_bad_record_refuses_the_batch_and_stores_nothing(stack, db, mutate, what):
    consumer = os.urandom(16)
    lease = await _open_lease_row(db, consumer)
    recs = [_record(consumer, lease=lease, picos=2_500_000) for _ in range(3)]
    mutate(recs[1])
    code = await _code(stack.metering.RecordUsageBatch(pb.RecordUsageBatchRequest(records=recs)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, what
    assert await _stored(db, [r.job_id for r in recs]) == 0


async def test_duplicate_job_ids_and_batch_sizes_are_invalid(stack, db):
    consumer = os.urandom(16)
    lease = await _open_lease_row(db, consumer)
    rec = _record(consumer, lease=lease, picos=1)
    other = _record(consumer, lease=lease, picos=1)
    dup = pb.RecordUsageBatchRequest(records=[other, rec, rec])
    assert await _code(stack.metering.RecordUsageBatch(dup)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _stored(db, [rec.job_id, other.job_id]) == 0
    empty = pb.RecordUsageBatchRequest()
    assert await _code(stack.metering.RecordUsageBatch(empty)) == grpc.StatusCode.INVALID_ARGUMENT
    big = pb.RecordUsageBatchRequest(records=[_record(consumer, lease=lease, picos=1) for _ in range(1_001)])
    assert await _code(stack.metering.RecordUsageBatch(big)) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("state", [None, LeaseState.OPENING, LeaseState.CLEARED, LeaseState.REFUSED, "other"])
async def test_records_only_go_on_a_lease_that_takes_them(stack, db, state):
    """Unknown, not yet open, already cleared, refused, or another partner's:
    FAILED_PRECONDITION, and nothing of the batch is stored."""
    consumer = os.urandom(16)
    if state is None:
        lease = os.urandom(16)
    elif state == "other":
        lease = await _open_lease_row(db, os.urandom(16))
    else:
        lease = await _open_lease_row(db, consumer, state)
    good = _record(consumer, picos=0, cost=0)
    bad = _record(consumer, lease=lease, picos=3)
    code = await _code(stack.metering.RecordUsageBatch(pb.RecordUsageBatchRequest(records=[good, bad])))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert await _stored(db, [good.job_id, bad.job_id]) == 0


async def test_a_record_retried_after_its_lease_closed_is_still_answered(stack, db):
    consumer = os.urandom(16)
    lease = await _open_lease_row(db, consumer)
    rec = _record(consumer, lease=lease, picos=9)
    assert (await stack.metering.RecordUsageBatch(pb.RecordUsageBatchRequest(records=[rec]))).created[0]
    await db.execute(f"UPDATE metering.leases SET state = {int(LeaseState.CLEARED)}, cleared_at = now() "
                     "WHERE lease_id = $1", pgproto.UUID(lease))
    again = await stack.metering.RecordUsageBatch(pb.RecordUsageBatchRequest(records=[rec]))
    assert list(again.created) == [False]


async def test_records_on_a_lease_are_not_settled_per_job(stack, db):
    """A per-job record (with its reservation) is settled by the outbox; a
    lease's record in the same batch stays for clearing."""
    ledger = stack.ledger
    consumer, provider = os.urandom(16), os.urandom(16)
    await ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[
        lpb.Account(id=consumer, ledger=1, kind=lpb.ACCOUNT_KIND_CONSUMER, flags=DMNEC),
        lpb.Account(id=provider, ledger=1, kind=lpb.ACCOUNT_KIND_PROVIDER, flags=DMNEC)]))
    await ledger.TopUp(lpb.TopUpRequest(account_id=consumer, amount=10_000, idempotency_key=consumer.hex()))
    legacy = _record(consumer, cost=40)
    legacy.provider_account_id = provider
    r = await ledger.Reserve(lpb.ReserveRequest(job_id=legacy.job_id, consumer_account_id=consumer, amount=100,
                                                timeout_s=60))
    assert r.status == lpb.OPERATION_STATUS_OK
    lease = await _open_lease_row(db, consumer)
    leased = _record(consumer, lease=lease, picos=1_000)
    await stack.metering.RecordUsageBatch(pb.RecordUsageBatchRequest(records=[leased, legacy]))

    async def settled():
        return (await stack.metering.GetJob(pb.GetJobRequest(job_id=legacy.job_id))).settlement == \
            pb.SETTLEMENT_STATE_SETTLED

    await eventually(settled, what="the per-job record's settlement")
    worker = stack.metering_srv.parts["worker"]
    await worker.run_once()
    got = await stack.metering.GetJob(pb.GetJobRequest(job_id=leased.job_id))
    assert got.settlement == pb.SETTLEMENT_STATE_PENDING and got.cost_micros == 1


async def test_concurrent_record_usage_calls_share_commits(stack, db):
    writer = stack.metering_srv.parts["usage_writer"]
    consumer = os.urandom(16)
    lease = await _open_lease_row(db, consumer)
    recs = [_record(consumer, lease=lease, picos=10**6) for _ in range(200)]
    before = writer.commits
    res = await asyncio.gather(*(stack.metering.RecordUsage(pb.RecordUsageRequest(record=r)) for r in recs))
    assert all(x.created for x in res)
    assert await _stored(db, [r.job_id for r in recs]) == 200
    commits = writer.commits - before
    assert 1 <= commits <= 100, commits  # 200 calls, far fewer commits


async def test_calls_queued_together_commit_together_and_fail_alone(stack, db):
    """The writer itself: calls queued at once take one commit; a conflicting
    call in it is refused alone, the others are stored."""
    writer = stack.metering_srv.parts["usage_writer"]
    consumer = os.urandom(16)
    lease = await _open_lease_row(db, consumer)
    stored = _record(consumer, lease=lease, picos=5)
    await stack.metering.RecordUsage(pb.RecordUsageRequest(record=stored))
    good = [[usage.validate(_record(consumer, lease=lease, picos=i + 1), 1000)] for i in range(50)]
    clash = [usage.validate(_record(consumer, lease=lease, picos=1), 1000),
             usage.validate(_record(consumer, lease=lease, picos=6, job=stored.job_id), 1000)]
    before = writer.commits
    out = await asyncio.gather(*(writer.record(rows) for rows in [*good, clash]), return_exceptions=True)
    assert writer.commits - before == 1
    assert out[:-1] == [[True]] * 50
    assert type(out[-1]).__name__ == "Conflict"
    assert await _stored(db, [rows[0][0].bytes for rows in good]) == 50
    assert await _stored(db, [clash[0][0].bytes]) == 0


@pytest.mark.parametrize("good_n", [3, store.COPY_ROWS_MIN + 10])  # one statement, or one COPY
async def test_both_fast_ways_store_all_new_records_or_nothing(stack, db, good_n):
    """A batch of new records is stored in one go (one statement when small,
    a COPY when large); a stored job id or a lease shut in the same batch
    writes nothing that way, and the careful path then refuses those calls
    alone."""
    writer = stack.metering_srv.parts["usage_writer"]
    consumer = os.urandom(16)
    lease = await _open_lease_row(db, consumer)
    shut = await _open_lease_row(db, consumer, LeaseState.CLEARED)
    done = _record(consumer, lease=lease, picos=5)
    await stack.metering.RecordUsage(pb.RecordUsageRequest(record=done))

    def good():
        return [[usage.validate(_record(consumer, lease=lease, picos=i + 1), 1000)] for i in range(good_n)]

    first = good()
    before = writer.commits
    assert await writer.record([r for call in first for r in call]) == [True] * good_n
    assert writer.commits - before == 1
    for odd in ([usage.validate(done, 1000)], [usage.validate(_record(consumer, lease=shut, picos=5), 1000)]):
        calls = good()
        out = await asyncio.gather(*(writer.record(rows) for rows in [*calls, odd]), return_exceptions=True)
        assert out[:-1] == [[True]] * good_n
        retried = odd[0][0].bytes == done.job_id
        assert out[-1] == [False] if retried else type(out[-1]).__name__ == "FailedPrecondition"
        assert await _stored(db, [rows[0][0].bytes for rows in calls]) == good_n
    assert await _stored(db, [rows[0][0].bytes for rows in first]) == good_n
