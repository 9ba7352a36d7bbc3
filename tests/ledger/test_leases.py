"""Credit leases (OpenLease): one hold per partner and replica, sized in the
single writer from what the partner has available, so a small balance gets
exactly itself and no two leases ever hold more than the balance; idempotent
by lease id; a refusal writes nothing and does not burn the id."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from idlegrid.ledger.v1 import ledger_pb2 as pb
from tests.ledger.leasing import S, books_ok, consumer, well_known
from tests.ledger.support import balances, row_counts


def _open(lid: bytes, who: bytes, amount_max: int, amount_min: int = 1, user_data: bytes = b""):
    return pb.OpenLeaseRequest(lease_id=lid, consumer_account_id=who, amount_min=amount_min,
                               amount_max=amount_max, user_data=user_data)


async def test_a_small_balance_is_leased_exactly_and_a_second_lease_sees_it_held(ledger, db_url):
    who = await consumer(ledger, 7)
    escrow = await well_known(ledger, "escrow:jobs")
    (e0,) = await balances(ledger, escrow)
    replica = os.urandom(16)
    r = await ledger.OpenLease(_open(os.urandom(16), who, 1000, user_data=replica))
    assert (r.status, r.amount, r.available, r.held_elsewhere) == (S.OPERATION_STATUS_OK, 7, 7, 0)
    c, e = await balances(ledger, who, escrow)
    assert c == (7, 0, 0, 7) and e[2] - e0[2] == 7
    before = await row_counts(db_url)
    r = await ledger.OpenLease(_open(os.urandom(16), who, 1000))
    assert (r.status, r.amount, r.available, r.held_elsewhere) == (S.OPERATION_STATUS_INSUFFICIENT_FUNDS, 0, 0, 7)
    assert await row_counts(db_url) == before  # nothing written, no id burned
    await books_ok(db_url)


async def test_a_lease_takes_at_most_amount_max_and_refuses_below_amount_min(ledger, db_url):
    who = await consumer(ledger, 100)
    r = await ledger.OpenLease(_open(os.urandom(16), who, 30, amount_min=10))
    assert (r.status, r.amount, r.available, r.held_elsewhere) == (S.OPERATION_STATUS_OK, 30, 100, 0)
    lid = os.urandom(16)
    r = await ledger.OpenLease(_open(lid, who, 500, amount_min=71))
    assert (r.status, r.available, r.held_elsewhere) == (S.OPERATION_STATUS_INSUFFICIENT_FUNDS, 70, 30)
    # Not burned: the same lease id succeeds once the partner has the credits.
    await ledger.TopUp(pb.TopUpRequest(account_id=who, amount=1, idempotency_key=os.urandom(8).hex()))
    r = await ledger.OpenLease(_open(lid, who, 500, amount_min=71))
    assert (r.status, r.amount, r.available, r.held_elsewhere) == (S.OPERATION_STATUS_OK, 71, 71, 30)
    assert await balances(ledger, who) == [(101, 0, 0, 101)]
    await books_ok(db_url)


async def test_a_retry_answers_the_amount_first_granted_and_another_consumer_is_a_conflict(ledger, db_url):
    who, other = await consumer(ledger, 50), await consumer(ledger, 50)
    lid = os.urandom(16)
    first = await ledger.OpenLease(_open(lid, who, 40))
    assert (first.status, first.amount) == (S.OPERATION_STATUS_OK, 40)
    await ledger.TopUp(pb.TopUpRequest(account_id=who, amount=100, idempotency_key=os.urandom(8).hex()))
    for _ in range(2):
        again = await ledger.OpenLease(_open(lid, who, 40))
        assert (again.status, again.amount) == (S.OPERATION_STATUS_ALREADY_APPLIED, 40)
    r = await ledger.OpenLease(_open(lid, other, 40))
    assert r.status == S.OPERATION_STATUS_CONFLICT
    r = await ledger.OpenLease(_open(lid, who, 40, user_data=os.urandom(16)))
    assert r.status == S.OPERATION_STATUS_CONFLICT
    assert await balances(ledger, who, other) == [(40, 0, 0, 150), (0, 0, 0, 50)]
    await books_ok(db_url)


async def test_concurrent_leases_never_hold_more_than_the_balance(ledger, db_url):
    """40 leases race for 37 credits: together they hold exactly 37, the
    refused ones nothing, whatever the batching."""
    who = await consumer(ledger, 37)
    rs = await asyncio.gather(*(ledger.OpenLease(_open(os.urandom(16), who, 5, amount_min=1 + i % 3))
                                for i in range(40)))
    granted = [r.amount for r in rs if r.status == S.OPERATION_STATUS_OK]
    assert all(r.status in (S.OPERATION_STATUS_OK, S.OPERATION_STATUS_INSUFFICIENT_FUNDS) for r in rs)
    assert sum(granted) == 37 and all(1 <= g <= 5 for g in granted)
    assert await balances(ledger, who) == [(37, 0, 0, 37)]
    await books_ok(db_url)


async def test_40_jobs_on_credits_for_4_hold_4(ledger, db_url):
    who = await consumer(ledger, 4)
    rs = await asyncio.gather(*(ledger.OpenLease(_open(os.urandom(16), who, 1, amount_min=1)) for _ in range(40)))
    assert sorted(r.status for r in rs) == sorted([S.OPERATION_STATUS_OK] * 4 +
                                                  [S.OPERATION_STATUS_INSUFFICIENT_FUNDS] * 36)
    await books_ok(db_url)


@pytest.mark.parametrize("field, value", [
    ("lease_id", b"short"), ("lease_id", bytes(16)), ("consumer_account_id", b""), ("amount_min", 0),
    ("amount_max", 0), ("amount_max", 2**63), ("user_data", b"12345"),
])
async def test_a_malformed_lease_is_refused(ledger, field, value):
    req = _open(os.urandom(16), os.urandom(16), 10, amount_min=2)
    setattr(req, field, value)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await ledger.OpenLease(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_lease_on_an_unknown_account_is_not_found(ledger):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await ledger.OpenLease(_open(os.urandom(16), os.urandom(16), 10))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
