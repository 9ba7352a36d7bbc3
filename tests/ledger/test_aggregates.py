"""Held node aggregates: ReleaseAggregates posts one in full, VoidAggregates
voids it and refunds the partners who paid, exactly; each ends once under
retries and races; ``verify`` proves the books at every step."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from idlegrid.ledger.v1 import ledger_pb2 as pb
from tests.ledger.leasing import S, aggregate, books_ok, charge, consumer, lease, provider, window
from tests.ledger.support import balances, row_counts

SHARE = 90


async def _held(ledger, n: int):
    """(consumers a and b, provider, aggregate ids): ``n`` held aggregates of
    SHARE, paid half by a, half by b, in one window."""
    a, b = await consumer(ledger, 10_000), await consumer(ledger, 10_000)
    p = await provider(ledger)
    la, lb = await lease(ledger, a, 5_000), await lease(ledger, b, 5_000)
    aggs = [aggregate(p, SHARE, hold=True) for _ in range(n)]
    half = n * SHARE // 2
    r = await ledger.ClearWindow(window([charge(la, half + n), charge(lb, n * SHARE - half + n)], aggs, 2 * n))
    assert r.status == S.OPERATION_STATUS_OK
    return a, b, p, [x.aggregate_id for x in aggs]


def _void(aid: bytes, *refunds: tuple[bytes, int]) -> pb.VoidAggregate:
    return pb.VoidAggregate(aggregate_id=aid, refunds=[pb.Refund(consumer_account_id=c, amount=x) for c, x in refunds])


async def test_release_posts_each_aggregate_in_full_once(ledger, db_url):
    a, b, p, aggs = await _held(ledger, 3)
    r = await ledger.ReleaseAggregates(pb.ReleaseAggregatesRequest(aggregate_ids=aggs))
    assert [(x.status, x.amount) for x in r.results] == [(S.OPERATION_STATUS_OK, SHARE)] * 3
    assert await balances(ledger, p) == [(0, 0, 0, 3 * SHARE)]
    again = await ledger.ReleaseAggregates(pb.ReleaseAggregatesRequest(aggregate_ids=aggs))
    assert [x.status for x in again.results] == [S.OPERATION_STATUS_ALREADY_APPLIED] * 3
    v = await ledger.VoidAggregates(pb.VoidAggregatesRequest(aggregates=[_void(aggs[0], (a, SHARE))]))
    assert v.results[0].status == S.OPERATION_STATUS_HOLD_ALREADY_RESOLVED
    assert await balances(ledger, p) == [(0, 0, 0, 3 * SHARE)]
    await books_ok(db_url)


async def test_void_refunds_each_partner_exactly_and_once(ledger, db_url):
    a, b, p, aggs = await _held(ledger, 2)
    c0 = await balances(ledger, a, b)
    req = pb.VoidAggregatesRequest(aggregates=[_void(aggs[0], (a, 60), (b, 30)), _void(aggs[1], (b, SHARE))])
    r = await ledger.VoidAggregates(req)
    assert [(x.status, x.amount) for x in r.results] == [(S.OPERATION_STATUS_OK, SHARE)] * 2
    assert len(r.results[0].transfer_ids) == 3  # the void and two refunds
    c1 = await balances(ledger, a, b)
    assert (c1[0][3] - c0[0][3], c1[1][3] - c0[1][3]) == (60, 120)
    assert await balances(ledger, p) == [(0, 0, 0, 0)]
    again = await ledger.VoidAggregates(req)
    assert [x.status for x in again.results] == [S.OPERATION_STATUS_ALREADY_APPLIED] * 2
    state = await row_counts(db_url)
    for other in (_void(aggs[0], (a, 90)), _void(aggs[0], (a, 30), (b, 60))):  # another split: never a 2nd refund
        r = await ledger.VoidAggregates(pb.VoidAggregatesRequest(aggregates=[other]))
        assert r.results[0].status == S.OPERATION_STATUS_CONFLICT
    rel = await ledger.ReleaseAggregates(pb.ReleaseAggregatesRequest(aggregate_ids=aggs))
    assert [x.status for x in rel.results] == [S.OPERATION_STATUS_HOLD_ALREADY_RESOLVED] * 2
    assert await balances(ledger, a, b) == c1 and await row_counts(db_url) == state
    await books_ok(db_url)


async def test_release_and_void_racing_end_each_aggregate_exactly_once(ledger, db_url):
    a, b, p, aggs = await _held(ledger, 20)
    c0 = await balances(ledger, a, b)
    calls = [ledger.ReleaseAggregates(pb.ReleaseAggregatesRequest(aggregate_ids=aggs)) if i % 2 else
             ledger.VoidAggregates(pb.VoidAggregatesRequest(aggregates=[
                 _void(x, (a, 45), (b, 45)) for x in reversed(aggs)])) for i in range(6)]
    results = await asyncio.gather(*calls)
    ended = {x: 0 for x in aggs}
    for r, i in zip(results, range(6), strict=True):
        ids = aggs if i % 2 else list(reversed(aggs))
        for x, res in zip(ids, r.results, strict=True):
            ended[x] += res.status == S.OPERATION_STATUS_OK
    assert set(ended.values()) == {1}  # one OK per aggregate, across all the calls
    c1, (pp,) = await balances(ledger, a, b), await balances(ledger, p)
    refunded = (c1[0][3] - c0[0][3]) + (c1[1][3] - c0[1][3])
    assert pp[2] == 0 and refunded + pp[3] == 20 * SHARE and refunded % SHARE == 0
    await books_ok(db_url)


async def test_refunds_that_do_not_sum_to_the_aggregate_are_refused_whole(ledger, db_url):
    a, b, _, aggs = await _held(ledger, 2)
    before = await row_counts(db_url)
    for bad in ([_void(aggs[0], (a, SHARE)), _void(aggs[1], (a, 50), (b, 39))],
                [_void(aggs[0], (a, SHARE + 1))],
                [_void(aggs[0], (a, 45), (a, 45))],
                [_void(aggs[0], (os.urandom(16), SHARE))]):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ledger.VoidAggregates(pb.VoidAggregatesRequest(aggregates=bad))
        assert e.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert await row_counts(db_url) == before
    await books_ok(db_url)


async def test_aggregates_not_held_are_not_found(ledger, db_url):
    who = await consumer(ledger, 100)
    p = await provider(ledger)
    posted = aggregate(p, 10)
    r = await ledger.ClearWindow(window([charge(await lease(ledger, who, 10), 10)], [posted], 0))
    assert r.status == S.OPERATION_STATUS_OK
    for ids in ([posted.aggregate_id], [os.urandom(16)]):
        rel = await ledger.ReleaseAggregates(pb.ReleaseAggregatesRequest(aggregate_ids=ids))
        assert rel.results[0].status == S.OPERATION_STATUS_HOLD_NOT_FOUND
        v = await ledger.VoidAggregates(pb.VoidAggregatesRequest(aggregates=[_void(ids[0], (who, 10))]))
        assert v.results[0].status == S.OPERATION_STATUS_HOLD_NOT_FOUND
    await books_ok(db_url)


@pytest.mark.parametrize("ids", [[], [b"short"], [bytes(16)], [b"x" * 16, b"x" * 16],
                                 [os.urandom(16) for _ in range(1001)]],
                         ids=["empty", "short id", "zero id", "twice", "too many"])
async def test_a_malformed_aggregates_request_is_refused(ledger, ids):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await ledger.ReleaseAggregates(pb.ReleaseAggregatesRequest(aggregate_ids=ids))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await ledger.VoidAggregates(pb.VoidAggregatesRequest(aggregates=[_void(i, (b"c" * 16, 1)) for i in ids]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
