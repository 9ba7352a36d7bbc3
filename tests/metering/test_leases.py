"""Credit leases through metering, with a real ledger: recorded before the
ledger holds them, idempotent by lease id, refused with what the partner has
and what other leases hold, closed with their job count, and queued for
clearing when closed and complete, crash-expired, or stuck OPENING."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from asyncpg.pgproto import pgproto
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering import leases_store
from idlegrid.metering.leases import LeaseState
from idlegrid.metering.v1 import metering_pb2 as pb
from tests.harness.stack import start_stack

DMNEC = lpb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
REPLICA = os.urandom(16)


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


async def _consumer(ledger, credits: int) -> bytes:
    consumer = os.urandom(16)
    await ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[
        lpb.Account(id=consumer, ledger=1, kind=lpb.ACCOUNT_KIND_CONSUMER, flags=DMNEC)]))
    if credits:
        await ledger.TopUp(lpb.TopUpRequest(account_id=consumer, amount=credits, idempotency_key=consumer.hex()))
    return consumer


def _ask(consumer: bytes, lo: int, hi: int, *, lease: bytes | None = None, use_s: float = 2.0,
         max_job_s: int = 60) -> pb.OpenLeaseRequest:
    until = Timestamp()
    until.FromDatetime(datetime.now(UTC) + timedelta(seconds=use_s))
    return pb.OpenLeaseRequest(lease_id=lease or os.urandom(16), consumer_account_id=consumer, amount_min=lo,
                               amount_max=hi, use_until=until, max_job_s=max_job_s, replica_id=REPLICA)


async def _account(ledger, account: bytes) -> lpb.Account:
    return (await ledger.LookupAccounts(lpb.LookupAccountsRequest(ids=[account]))).accounts[0]


async def _state(db, lease: bytes) -> LeaseState:
    return LeaseState(await db.fetchval("SELECT state FROM metering.leases WHERE lease_id = $1",
                                        pgproto.UUID(lease)))


async def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value.code()


def _record(consumer: bytes, lease: bytes, picos: int) -> pb.UsageRecord:
    now = Timestamp()
    now.GetCurrentTime()
    return pb.UsageRecord(job_id=os.urandom(16), consumer_account_id=consumer, provider_account_id=os.urandom(16),
                          node_id="n", model="m", prompt_tokens=1, price_input_per_mtok=picos,
                          cost_picos=picos, cost_micros=-(-picos // 10**6), lease_id=lease,
                          outcome=pb.OUTCOME_COMPLETED, started_at=now, finished_at=now)


async def test_a_lease_holds_up_to_its_maximum_once(stack, db):
    desk = stack.metering_srv.parts["leases"]
    consumer = await _consumer(stack.ledger, 10_000)
    ask = _ask(consumer, 100, 4_000)
    got = await stack.metering.OpenLease(ask)
    assert (got.amount, got.insufficient_funds, got.available, got.held_elsewhere) == (4_000, False, 10_000, 0)
    assert await _state(db, ask.lease_id) == LeaseState.OPEN
    assert (await _account(stack.ledger, consumer)).debits_pending == 4_000
    calls = desk.ledger_calls
    again = await stack.metering.OpenLease(ask)
    assert again == got and desk.ledger_calls == calls  # answered from metering's record
    assert (await _account(stack.ledger, consumer)).debits_pending == 4_000
    changed = pb.OpenLeaseRequest()
    changed.CopyFrom(ask)
    changed.amount_max = 5_000
    assert await _code(stack.metering.OpenLease(changed)) == grpc.StatusCode.ABORTED


async def test_a_lease_takes_what_is_left_and_refusals_say_what_others_hold(stack, db):
    consumer = await _consumer(stack.ledger, 3_000)
    first = await stack.metering.OpenLease(_ask(consumer, 100, 2_500))
    assert first.amount == 2_500
    second = await stack.metering.OpenLease(_ask(consumer, 100, 2_500))
    assert (second.amount, second.available, second.held_elsewhere) == (500, 500, 2_500)
    ask = _ask(consumer, 100, 1_000)
    refused = await stack.metering.OpenLease(ask)
    assert refused.insufficient_funds and refused.amount == 0
    assert (refused.available, refused.held_elsewhere) == (0, 3_000)
    assert await _state(db, ask.lease_id) == LeaseState.REFUSED
    assert await stack.metering.OpenLease(ask) == refused
    assert await _code(stack.metering.CloseLease(pb.CloseLeaseRequest(lease_id=ask.lease_id))) == \
        grpc.StatusCode.FAILED_PRECONDITION


async def test_a_lease_left_opening_by_a_crash_opens_on_retry(stack, db):
    """Metering recorded the lease and died before (or after) the ledger
    call: the scheduler's retry with the same lease id finishes it."""
    consumer = await _consumer(stack.ledger, 1_000)
    ask = _ask(consumer, 10, 600)
    await db.execute(
        """INSERT INTO metering.leases (lease_id, consumer_account_id, replica_id, amount_min, amount_max,
                                        use_until, max_job_s) VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        pgproto.UUID(ask.lease_id), pgproto.UUID(consumer), pgproto.UUID(REPLICA), 10, 600,
        ask.use_until.ToDatetime(tzinfo=UTC), 60)
    got = await stack.metering.OpenLease(ask)
    assert got.amount == 600 and await _state(db, ask.lease_id) == LeaseState.OPEN
    assert (await _account(stack.ledger, consumer)).debits_pending == 600


@pytest.mark.parametrize("mutate, what", [
    (lambda r: setattr(r, "lease_id", b"x"), "lease_id"),
    (lambda r: setattr(r, "replica_id", b""), "replica_id"),
    (lambda r: setattr(r, "amount_min", 0), "amount_min 0"),
    (lambda r: setattr(r, "amount_min", r.amount_max + 1), "min > max"),
    (lambda r: setattr(r, "max_job_s", 601), "max_job_s"),
    (lambda r: r.use_until.FromDatetime(datetime.now(UTC) - timedelta(seconds=1)), "use_until passed"),
    (lambda r: r.ClearField("use_until"), "no use_until"),
])
async def test_bad_lease_requests_are_refused_and_nothing_is_recorded(stack, db, mutate, what):
    consumer = await _consumer(stack.ledger, 1_000)
    ask = _ask(consumer, 10, 100)
    mutate(ask)
    assert await _code(stack.metering.OpenLease(ask)) == grpc.StatusCode.INVALID_ARGUMENT, what
    assert (await _account(stack.ledger, consumer)).debits_pending == 0
    if len(ask.lease_id) == 16:
        assert await db.fetchval("SELECT count(*) FROM metering.leases WHERE lease_id = $1",
                                 pgproto.UUID(ask.lease_id)) == 0


async def test_close_records_the_job_count_once(stack, db):
    consumer = await _consumer(stack.ledger, 10_000)
    ask = _ask(consumer, 10, 1_000)
    await stack.metering.OpenLease(ask)
    recs = [_record(consumer, ask.lease_id, 400_000) for _ in range(3)]
    await stack.metering.RecordUsageBatch(pb.RecordUsageBatchRequest(records=recs))
    too_few = pb.CloseLeaseRequest(lease_id=ask.lease_id, jobs=2)
    assert await _code(stack.metering.CloseLease(too_few)) == grpc.StatusCode.FAILED_PRECONDITION
    close = pb.CloseLeaseRequest(lease_id=ask.lease_id, jobs=3)
    await stack.metering.CloseLease(close)
    await stack.metering.CloseLease(close)  # idempotent
    assert await _state(db, ask.lease_id) in (LeaseState.CLOSED, LeaseState.CLEARED)
    other = pb.CloseLeaseRequest(lease_id=ask.lease_id, jobs=4)
    assert await _code(stack.metering.CloseLease(other)) == grpc.StatusCode.ABORTED
    unknown = pb.CloseLeaseRequest(lease_id=os.urandom(16), jobs=1)
    assert await _code(stack.metering.CloseLease(unknown)) == grpc.StatusCode.FAILED_PRECONDITION


async def test_what_clearing_takes(stack, db):
    """Closed with all its records; closed, records missing: only once
    expired; open past use_until + max_job_s (a crashed scheduler); OPENING
    for too long. A live lease is left alone."""
    consumer = await _consumer(stack.ledger, 100_000)
    asks = {name: _ask(consumer, 10, 1_000, max_job_s=5)
            for name in ("complete", "incomplete", "open", "opening")}
    for name in ("complete", "incomplete", "open"):
        await stack.metering.OpenLease(asks[name])
    ask = asks["opening"]
    await db.execute(
        """INSERT INTO metering.leases (lease_id, consumer_account_id, replica_id, amount_min, amount_max,
                                        use_until, max_job_s) VALUES ($1, $2, $3, 10, 1000, $4, 5)""",
        pgproto.UUID(ask.lease_id), pgproto.UUID(consumer), pgproto.UUID(REPLICA),
        ask.use_until.ToDatetime(tzinfo=UTC))
    for name, jobs in (("complete", 2), ("incomplete", 3)):
        lease = asks[name].lease_id
        recs = [_record(consumer, lease, 10**6) for _ in range(2)]
        await stack.metering.RecordUsageBatch(pb.RecordUsageBatchRequest(records=recs))
        await stack.metering.CloseLease(pb.CloseLeaseRequest(lease_id=lease, jobs=jobs))
    mine = {pgproto.UUID(a.lease_id): name for name, a in asks.items()}

    async def chosen(now: datetime) -> dict:
        rows = await leases_store.leases_to_clear(db, now)
        return {mine[r["lease_id"]]: (r["why"], r["records"]) for r in rows if r["lease_id"] in mine}

    now = datetime.now(UTC)
    got = await chosen(now)
    assert got.get("complete", ("closed", 2)) == ("closed", 2)  # (the clearing worker may have taken it)
    assert "incomplete" not in got and "open" not in got and "opening" not in got
    later = now + timedelta(seconds=2 + 5 + leases_store.SLACK_S + 1)
    got = await chosen(later)
    assert got.get("incomplete") == ("expired", 2) or await _state(db, asks["incomplete"].lease_id) in (
        LeaseState.CLEARED, LeaseState.VOIDED)
    assert got.get("open") == ("expired", 0)
    assert "opening" not in got
    got = await chosen(now + timedelta(seconds=leases_store.OPENING_S + 1))
    assert got.get("opening") == ("opening", 0)
