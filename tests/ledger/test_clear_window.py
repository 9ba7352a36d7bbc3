"""ClearWindow: a clearing window in one commit, all or nothing. Each lease
is posted for its charge (the rest returns to the partner; 0 voids it), each
node aggregate credits its provider (pending while held), the fee goes to
platform:revenue; every transfer carries its root prefix. Idempotent by
window; anything else that touches a cleared window is a conflict and
writes nothing. ``verify`` proves the books after each scenario and catches
a tampered lease post."""

from __future__ import annotations

import asyncio
import os
import uuid

import grpc
import pytest

from idlegrid.ledger.leases import lease_clear_id
from idlegrid.ledger.v1 import ledger_pb2 as pb
from tests.ledger.leasing import (
    S,
    aggregate,
    books_ok,
    charge,
    consumer,
    lease,
    provider,
    well_known,
    window,
)
from tests.ledger.support import balances, row_counts, run_verify
from tests.ledger.test_tampering import superuser


async def test_a_window_posts_leases_pays_providers_and_the_fee_in_one_commit(ledger, db_url):
    who = await consumer(ledger, 1000)
    l1, l2 = await lease(ledger, who, 100), await lease(ledger, who, 50)
    p1, p2 = await provider(ledger), await provider(ledger)
    escrow, revenue = await well_known(ledger, "escrow:jobs"), await well_known(ledger, "platform:revenue")
    e0, r0 = await balances(ledger, escrow, revenue)
    req = window([charge(l1, 60), charge(l2, 0)], [aggregate(p1, 30, hold=True), aggregate(p2, 24)], 6)
    r = await ledger.ClearWindow(req)
    assert r.status == S.OPERATION_STATUS_OK, r
    assert list(r.transfer_ids) == [lease_clear_id(l1), lease_clear_id(l2), req.aggregates[0].aggregate_id,
                                    req.aggregates[1].aggregate_id, req.window_id]
    c, q1, q2, e, rev = await balances(ledger, who, p1, p2, escrow, revenue)
    assert c == (0, 60, 0, 1000)  # charged 60, the rest of both leases back
    assert q1 == (0, 0, 30, 0) and q2 == (0, 0, 0, 24)  # held / posted
    assert rev[3] - r0[3] == 6
    assert e[0] - e0[0] == 30 and (e[3] - e[1]) - (e0[3] - e0[1]) == 30  # escrow keeps exactly the held one
    found = await ledger.LookupTransfers(pb.LookupTransfersRequest(ids=list(r.transfer_ids)))
    by_id = {t.id: t for t in found.transfers}
    prefixes = [x.root_prefix for x in req.leases] + [a.root_prefix for a in req.aggregates] + [req.fee_root_prefix]
    assert [by_id[i].user_data for i in r.transfer_ids] == prefixes
    assert [by_id[i].code for i in r.transfer_ids] == [pb.TRANSFER_CODE_LEASE] * 2 + [
        pb.TRANSFER_CODE_EARNING] * 2 + [pb.TRANSFER_CODE_FEE]
    await books_ok(db_url)


async def test_a_retry_is_already_applied_and_other_contents_are_a_conflict_that_writes_nothing(ledger, db_url):
    who = await consumer(ledger, 1000)
    l1, l2 = await lease(ledger, who, 100), await lease(ledger, who, 100)
    p = await provider(ledger)
    req = window([charge(l1, 50)], [aggregate(p, 45)], 5)
    assert (await ledger.ClearWindow(req)).status == S.OPERATION_STATUS_OK
    state = await balances(ledger, who, p), await row_counts(db_url)
    for _ in range(2):
        assert (await ledger.ClearWindow(req)).status == S.OPERATION_STATUS_ALREADY_APPLIED
    changed = pb.ClearWindowRequest()
    changed.CopyFrom(req)
    changed.leases[0].amount, changed.aggregates[0].amount = 51, 46  # other amounts
    extra = pb.ClearWindowRequest()
    extra.CopyFrom(req)
    extra.leases.append(charge(l2, 10))  # the same window with one more lease
    extra.aggregates.append(aggregate(p, 10))
    again = window([charge(l1, 50)], [aggregate(p, 45)], 5)  # the lease, in another window
    for bad in (changed, extra, again):
        r = await ledger.ClearWindow(bad)
        assert r.status == S.OPERATION_STATUS_CONFLICT, r
        assert (await balances(ledger, who, p), await row_counts(db_url)) == state
    await books_ok(db_url)


async def test_a_window_without_fee_is_idempotent_too(ledger, db_url):
    who = await consumer(ledger, 100)
    l1 = await lease(ledger, who, 20)
    p = await provider(ledger)
    req = window([charge(l1, 20)], [aggregate(p, 20)], 0)
    assert (await ledger.ClearWindow(req)).status == S.OPERATION_STATUS_OK
    assert (await ledger.ClearWindow(req)).status == S.OPERATION_STATUS_ALREADY_APPLIED
    with_fee = pb.ClearWindowRequest()
    with_fee.CopyFrom(req)
    with_fee.aggregates[0].amount, with_fee.fee = 19, 1
    assert (await ledger.ClearWindow(with_fee)).status == S.OPERATION_STATUS_CONFLICT
    assert await balances(ledger, who, p) == [(0, 20, 0, 100), (0, 0, 0, 20)]
    await books_ok(db_url)


async def test_one_bad_lease_fails_the_whole_window(ledger, db_url):
    who = await consumer(ledger, 1000)
    good, small = await lease(ledger, who, 100), await lease(ledger, who, 10)
    p = await provider(ledger)
    job = os.urandom(16)
    reserved = await ledger.Reserve(pb.ReserveRequest(job_id=job, consumer_account_id=who, amount=5, timeout_s=600))
    assert reserved.status == S.OPERATION_STATUS_OK
    not_a_lease = reserved.transfer_ids[0]  # a per-job reservation is not a lease
    state = await balances(ledger, who, p), await row_counts(db_url)
    cases = [
        (charge(os.urandom(16), 1), S.OPERATION_STATUS_HOLD_NOT_FOUND),
        (charge(not_a_lease, 1), S.OPERATION_STATUS_HOLD_NOT_FOUND),
        (charge(small, 11), S.OPERATION_STATUS_EXCEEDS_RESERVATION),
    ]
    for bad, status in cases:
        r = await ledger.ClearWindow(window([charge(good, 40), bad], [aggregate(p, 40 + bad.amount)], 0))
        assert r.status == status, r
        assert (await balances(ledger, who, p), await row_counts(db_url)) == state
    # A lease resolved outside clearing is HOLD_ALREADY_RESOLVED.
    done = await ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=[pb.Transfer(
        id=os.urandom(16), pending_id=small, flags=pb.TRANSFER_FLAG_VOID_PENDING_TRANSFER)]))
    assert list(done.results) == [pb.CREATE_TRANSFER_RESULT_OK]
    r = await ledger.ClearWindow(window([charge(good, 40), charge(small, 1)], [aggregate(p, 41)], 0))
    assert r.status == S.OPERATION_STATUS_HOLD_ALREADY_RESOLVED, r
    assert (await ledger.ClearWindow(window([charge(good, 40)], [aggregate(p, 40)], 0))).status == \
        S.OPERATION_STATUS_OK
    await books_ok(db_url)


def _bad_windows(lid: bytes, p: bytes) -> dict[str, pb.ClearWindowRequest]:
    out = {
        "unbalanced": window([charge(lid, 10)], [aggregate(p, 9)], 0),
        "no lease": window([], [], 0),
        "zero window id": window([charge(lid, 10)], [aggregate(p, 10)], 0, wid=bytes(16)),
        "zero aggregate": window([charge(lid, 0)], [aggregate(p, 0)], 0),
        "lease twice": window([charge(lid, 5), charge(lid, 5)], [aggregate(p, 10)], 0),
        "too many leases": window([charge(os.urandom(16), 0) for _ in range(4001)], [], 0),
        "too many aggregates": window([charge(lid, 4001)], [aggregate(p, 1) for _ in range(4001)], 0),
    }
    short = window([charge(lid, 10)], [aggregate(p, 10)], 0)
    short.aggregates[0].root_prefix = b"1234"
    out["short root prefix"] = short
    return out


@pytest.mark.parametrize("case", list(_bad_windows(b"l" * 16, b"p" * 16)))
async def test_a_malformed_window_is_refused_whole(ledger, db_url, case):
    who = await consumer(ledger, 100)
    lid = await lease(ledger, who, 100)
    p = await provider(ledger)
    before = await row_counts(db_url)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await ledger.ClearWindow(_bad_windows(lid, p)[case])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await row_counts(db_url) == before


async def test_a_full_window_of_4000_leases_and_4000_aggregates_clears_in_one_commit(ledger, db_url):
    consumers = [await consumer(ledger, 10_000) for _ in range(20)]
    providers = [await provider(ledger) for _ in range(20)]
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> bytes:
        async with sem:
            return await lease(ledger, consumers[i % 20], 10)

    leases = await asyncio.gather(*(one(i) for i in range(4000)))
    batches_before = (await row_counts(db_url))["batches"]
    req = window([charge(lid, 9) for lid in leases],
                 [aggregate(providers[i % 20], 8, hold=i % 2 == 0) for i in range(4000)], 4000)
    r = await ledger.ClearWindow(req)
    assert r.status == S.OPERATION_STATUS_OK
    assert len(r.transfer_ids) == 8001
    assert (await row_counts(db_url))["batches"] == batches_before + 1
    assert sum(b[1] for b in await balances(ledger, *consumers)) == 4000 * 9
    await books_ok(db_url)


async def test_verify_catches_a_tampered_lease_post(ledger, db_url):
    who = await consumer(ledger, 100)
    lid = await lease(ledger, who, 100)
    p = await provider(ledger)
    assert (await ledger.ClearWindow(window([charge(lid, 30)], [aggregate(p, 30)], 0))).status == \
        S.OPERATION_STATUS_OK
    await books_ok(db_url)
    post_id = lease_clear_id(lid)
    async with superuser(db_url) as su:
        seq, batch = await su.fetchrow("SELECT seq, batch FROM ledger.transfers WHERE id = $1", uuid.UUID(bytes=post_id))
        await su.execute("UPDATE ledger.transfers SET amount = amount - 10 WHERE seq = $1", seq)
        try:
            problems = (await run_verify(db_url, clearing=False)).problems
        finally:
            await su.execute("UPDATE ledger.transfers SET amount = amount + 10 WHERE seq = $1", seq)
    assert any(p.startswith(f"batch {batch} ") and "hash mismatch" in p for p in problems), problems
    assert any("stored balance" in p for p in problems), problems
    assert any("charges 20 but pays 30" in p for p in problems), problems
    await books_ok(db_url)
