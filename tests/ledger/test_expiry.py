"""Expiry of holds: the sweep (every 0.2 s in the test fixture, by the
database clock) voids a pending transfer whose timeout passed, releasing its
amount with a void flagged EXPIRED; afterwards the hold can be neither posted
nor voided, and a marketplace reservation that expired cannot be settled."""

from __future__ import annotations

from idlegrid.ledger.v1 import ledger_pb2 as pb
from tests.harness import eventually
from tests.ledger.support import (
    DMNEC,
    EXPIRED,
    PENDING,
    VOID,
    account,
    balances,
    create,
    create_accounts,
    expiry_of,
    post,
    run_verify,
    transfer,
    void,
)

S = pb.OperationStatus


async def test_pending_transfer_expires_releases_and_refuses_post_and_void(ledger, db_url):
    """A hold with timeout 1 s is voided by the sweep: pending balances go back
    to zero, the void carries TRANSFER_FLAG_EXPIRED and the full amount, a post
    or void afterwards answers PENDING_TRANSFER_EXPIRED and burns its id."""
    funder, consumer, escrow = account(), account(flags=DMNEC), account()
    await create_accounts(ledger, funder, consumer, escrow)
    assert await create(ledger, transfer(funder.id, consumer.id, 500)) == ["OK"]
    hold = transfer(consumer.id, escrow.id, 300, flags=PENDING, timeout_s=1)
    assert await create(ledger, hold) == ["OK"]
    assert await balances(ledger, consumer.id, escrow.id) == [(300, 0, 0, 500), (0, 0, 300, 0)]
    # while held, the consumer cannot spend the held credits
    assert await create(ledger, transfer(consumer.id, funder.id, 201)) == ["EXCEEDS_CREDITS"]

    exp = await eventually(lambda: expiry_of(ledger, consumer.id, hold.id), what="the expiry sweep")
    assert exp.flags == VOID | EXPIRED
    assert (exp.debit_account_id, exp.credit_account_id, exp.amount) == (consumer.id, escrow.id, 300)
    assert await balances(ledger, consumer.id, escrow.id) == [(0, 0, 0, 500), (0, 0, 0, 0)]
    assert await expiry_of(ledger, escrow.id, hold.id) == exp  # in both accounts' histories

    p = post(hold.id, 100)
    v = void(hold.id)
    assert await create(ledger, p, v) == ["PENDING_TRANSFER_EXPIRED", "PENDING_TRANSFER_EXPIRED"]
    assert await create(ledger, p, v) == ["ID_ALREADY_FAILED", "ID_ALREADY_FAILED"]
    assert await balances(ledger, consumer.id, escrow.id) == [(0, 0, 0, 500), (0, 0, 0, 0)]
    # the released credits are spendable again
    assert await create(ledger, transfer(consumer.id, funder.id, 500)) == ["OK"]
    rep = await run_verify(db_url)
    assert rep.ok, rep.problems


async def test_resolved_or_untimed_holds_are_not_swept(ledger, db_url):
    """The sweep voids only open holds whose timeout passed: a timed hold
    posted in time, and a hold with timeout 0, are left alone. (Proof without
    sleeping: a later timed hold, expiring after the first, has been swept,
    and the sweep voids every due hold at once.)"""
    a, b = account(), account()
    await create_accounts(ledger, a, b)
    posted = transfer(a.id, b.id, 10, flags=PENDING, timeout_s=1)
    forever = transfer(a.id, b.id, 20, flags=PENDING, timeout_s=0)
    assert await create(ledger, posted, forever) == ["OK", "OK"]
    assert await create(ledger, post(posted.id, 4)) == ["OK"]
    witness = transfer(a.id, b.id, 30, flags=PENDING, timeout_s=1)
    assert await create(ledger, witness) == ["OK"]
    await eventually(lambda: expiry_of(ledger, a.id, witness.id), what="the witness hold to expire")
    assert await expiry_of(ledger, a.id, posted.id) is None
    assert await expiry_of(ledger, a.id, forever.id) is None
    assert await balances(ledger, a.id, b.id) == [(20, 4, 0, 0), (0, 0, 20, 4)]
    assert await create(ledger, void(forever.id)) == ["OK"]
    rep = await run_verify(db_url)
    assert rep.ok, rep.problems


async def test_many_holds_expiring_together_are_all_released(ledger, db_url):
    """A batch of 200 timed holds on one consumer expires as a whole: every
    one gets exactly one expiry void and the consumer's pending debits return to 0."""
    funder, consumer, escrow = account(), account(flags=DMNEC), account()
    await create_accounts(ledger, funder, consumer, escrow)
    assert await create(ledger, transfer(funder.id, consumer.id, 10_000)) == ["OK"]
    holds = [transfer(consumer.id, escrow.id, 1 + i % 50, flags=PENDING, timeout_s=1) for i in range(200)]
    assert await create(ledger, *holds) == ["OK"] * 200

    async def released():
        (c,) = await balances(ledger, consumer.id)
        return c[0] == 0

    await eventually(released, what="all holds to be released")
    r = await ledger.GetAccountTransfers(pb.GetAccountTransfersRequest(account_id=consumer.id, limit=1000))
    voids = [t for t in r.transfers if t.flags & EXPIRED]
    assert sorted(t.pending_id for t in voids) == sorted(h.id for h in holds)
    assert sum(t.amount for t in voids) == sum(h.amount for h in holds)
    rep = await run_verify(db_url)
    assert rep.ok, rep.problems


async def test_settle_after_the_reservation_expired_is_hold_expired(ledger, db_url):
    """Reserve with timeout 1 s, let it expire: the consumer's credits are
    released, escrow holds nothing, Settle answers HOLD_EXPIRED (also on retry)
    and Release answers HOLD_EXPIRED (also on retry, when the settle's and the
    release's ids are burned); nothing reaches the provider."""
    consumer = account(flags=DMNEC)
    provider = account(pb.ACCOUNT_KIND_PROVIDER, DMNEC)
    await create_accounts(ledger, consumer, provider)
    assert (await ledger.TopUp(pb.TopUpRequest(account_id=consumer.id, amount=1_000,
                                               idempotency_key="expiry-topup"))).status == S.OPERATION_STATUS_OK
    escrow = (await ledger.ResolveAccount(pb.ResolveAccountRequest(name="escrow:jobs"))).account.id
    job = bytes.fromhex("0badc0de" * 4)
    r = await ledger.Reserve(pb.ReserveRequest(job_id=job, consumer_account_id=consumer.id, amount=400, timeout_s=1))
    assert r.status == S.OPERATION_STATUS_OK
    assert (await balances(ledger, consumer.id))[0] == (400, 0, 0, 1_000)
    hold_id = r.transfer_ids[0]
    await eventually(lambda: expiry_of(ledger, consumer.id, hold_id), what="the reservation to expire")
    assert (await balances(ledger, consumer.id))[0] == (0, 0, 0, 1_000)
    esc_before = (await balances(ledger, escrow))[0]
    settle = pb.SettleRequest(job_id=job, provider_account_id=provider.id, cost=300, fee_bps=1000)
    for _ in range(2):
        r = await ledger.Settle(settle)
        assert r.status == S.OPERATION_STATUS_HOLD_EXPIRED, r
    for _ in range(2):
        r = await ledger.Release(pb.ReleaseRequest(job_id=job))
        assert r.status == S.OPERATION_STATUS_HOLD_EXPIRED, r
    assert await balances(ledger, consumer.id, provider.id) == [(0, 0, 0, 1_000), (0, 0, 0, 0)]
    assert (await balances(ledger, escrow))[0] == esc_before
    rep = await run_verify(db_url)
    assert rep.ok, rep.problems
