"""Bad input to the marketplace operations (TopUp, Reserve, Settle, Release,
Payout): malformed requests are INVALID_ARGUMENT, unknown accounts NOT_FOUND,
business refusals a status; in every case nothing moves."""

from __future__ import annotations

import grpc
import pytest

from idlegrid.ledger.v1 import ledger_pb2 as pb
from tests.ledger.support import (
    DMNEC,
    account,
    balances,
    create_accounts,
    new_id,
    row_counts,
    run_verify,
)

S = pb.OperationStatus


@pytest.fixture(scope="module")
async def parties(ledger):
    """(consumer with 1,000 credits, provider, escrow id, platform id)."""
    consumer = account(flags=DMNEC)
    provider = account(pb.ACCOUNT_KIND_PROVIDER, DMNEC)
    await create_accounts(ledger, consumer, provider)
    r = await ledger.TopUp(pb.TopUpRequest(account_id=consumer.id, amount=1_000, idempotency_key="mkt-fund"))
    assert r.status == S.OPERATION_STATUS_OK
    escrow = (await ledger.ResolveAccount(pb.ResolveAccountRequest(name="escrow:jobs"))).account.id
    platform = (await ledger.ResolveAccount(pb.ResolveAccountRequest(name="platform:revenue"))).account.id
    return consumer.id, provider.id, escrow, platform


async def _unchanged(ledger, db_url, parties, call, *, burned: int = 0):
    """Awaits ``call()`` (a gRPC call starts when it is created, hence the
    callable); asserts no transfer, batch or balance changed (and
    exactly ``burned`` ids were burned)."""
    before, bal = await row_counts(db_url), await balances(ledger, *parties)
    out = await call()
    after = await row_counts(db_url)
    assert after == {**before, "failed_transfers": before["failed_transfers"] + burned}
    assert await balances(ledger, *parties) == bal
    return out


async def _code(coro) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await coro
    return e.value.code()


def _invalid_requests(consumer: bytes, provider: bytes):
    job = new_id()
    return [
        ("reserve timeout 0", "Reserve", pb.ReserveRequest(job_id=job, consumer_account_id=consumer, amount=1)),
        ("reserve timeout > 1 day", "Reserve",
         pb.ReserveRequest(job_id=job, consumer_account_id=consumer, amount=1, timeout_s=86_401)),
        ("reserve amount 0", "Reserve", pb.ReserveRequest(job_id=job, consumer_account_id=consumer, timeout_s=5)),
        ("reserve 'negative' amount", "Reserve",
         pb.ReserveRequest(job_id=job, consumer_account_id=consumer, amount=2**64 - 1, timeout_s=5)),
        ("reserve job id of 15 bytes", "Reserve",
         pb.ReserveRequest(job_id=job[:15], consumer_account_id=consumer, amount=1, timeout_s=5)),
        ("reserve zero job id", "Reserve",
         pb.ReserveRequest(job_id=bytes(16), consumer_account_id=consumer, amount=1, timeout_s=5)),
        ("reserve consumer id of 4 bytes", "Reserve",
         pb.ReserveRequest(job_id=job, consumer_account_id=b"abcd", amount=1, timeout_s=5)),
        ("settle fee_bps 10001", "Settle",
         pb.SettleRequest(job_id=job, provider_account_id=provider, cost=1, fee_bps=10_001)),
        ("settle job id of 17 bytes", "Settle",
         pb.SettleRequest(job_id=job + b"x", provider_account_id=provider, cost=1)),
        ("settle without provider", "Settle", pb.SettleRequest(job_id=job, cost=1)),
        ("settle 'negative' cost", "Settle",
         pb.SettleRequest(job_id=job, provider_account_id=provider, cost=2**63)),
        ("release without job id", "Release", pb.ReleaseRequest()),
        ("top-up amount 0", "TopUp", pb.TopUpRequest(account_id=consumer, idempotency_key="k0")),
        ("top-up without key", "TopUp", pb.TopUpRequest(account_id=consumer, amount=1)),
        ("top-up key of 129 chars", "TopUp", pb.TopUpRequest(account_id=consumer, amount=1, idempotency_key="k" * 129)),
        ("top-up account of 15 bytes", "TopUp", pb.TopUpRequest(account_id=consumer[:15], amount=1,
                                                                 idempotency_key="k1")),
        ("payout amount 0", "Payout", pb.PayoutRequest(provider_account_id=provider, idempotency_key="p0")),
        ("payout without key", "Payout", pb.PayoutRequest(provider_account_id=provider, amount=1)),
        ("top-up on a ledger of its own, different from the account's", "TopUp",
         pb.TopUpRequest(account_id=consumer, amount=1, idempotency_key="k2", ledger=2)),
    ]


_CASES = [c[0] for c in _invalid_requests(b"", b"")]


@pytest.mark.parametrize("case", _CASES)
async def test_malformed_operation_is_invalid_argument_and_moves_nothing(ledger, db_url, parties, case):
    """Each malformed marketplace request is INVALID_ARGUMENT with nothing written."""
    consumer, provider, *_ = parties
    (_, method, req), = [c for c in _invalid_requests(consumer, provider) if c[0] == case]
    if method == "TopUp" and req.ledger == 2:
        # external:deposits does not exist on ledger 2: the deposit account is unknown
        expected = grpc.StatusCode.NOT_FOUND
    else:
        expected = grpc.StatusCode.INVALID_ARGUMENT
    assert await _unchanged(ledger, db_url, parties, lambda: _code(getattr(ledger, method)(req))) == expected


async def test_unknown_accounts_are_not_found(ledger, db_url, parties):
    """Reserve for an unknown consumer, top-up of an unknown account, payout
    from an unknown provider and settle to an unknown provider: NOT_FOUND,
    nothing moves (the reservation stays open)."""
    consumer, *_ = parties
    calls = [
        lambda: ledger.Reserve(pb.ReserveRequest(job_id=new_id(), consumer_account_id=new_id(), amount=1,
                                                 timeout_s=60)),
        lambda: ledger.TopUp(pb.TopUpRequest(account_id=new_id(), amount=1, idempotency_key="unknown-topup")),
        lambda: ledger.Payout(pb.PayoutRequest(provider_account_id=new_id(), amount=1,
                                               idempotency_key="unknown-payout")),
    ]
    for c in calls:
        assert await _unchanged(ledger, db_url, parties, lambda c=c: _code(c())) == grpc.StatusCode.NOT_FOUND
    job = new_id()
    r = await ledger.Reserve(pb.ReserveRequest(job_id=job, consumer_account_id=consumer, amount=10, timeout_s=60))
    assert r.status == S.OPERATION_STATUS_OK
    code = await _unchanged(ledger, db_url, parties, lambda: _code(ledger.Settle(
        pb.SettleRequest(job_id=job, provider_account_id=new_id(), cost=5, fee_bps=1000))))
    assert code == grpc.StatusCode.NOT_FOUND
    r = await ledger.Release(pb.ReleaseRequest(job_id=job))
    assert r.status == S.OPERATION_STATUS_OK


async def test_reserve_beyond_the_balance_is_insufficient_funds(ledger, db_url, parties):
    """Reserving more than the consumer's available credits answers
    INSUFFICIENT_FUNDS (also on retry) and holds nothing."""
    consumer, *_ = parties
    req = pb.ReserveRequest(job_id=new_id(), consumer_account_id=consumer, amount=1_001, timeout_s=60)
    r = await _unchanged(ledger, db_url, parties, lambda: ledger.Reserve(req), burned=1)
    assert r.status == S.OPERATION_STATUS_INSUFFICIENT_FUNDS
    assert list(r.results) == [pb.CREATE_TRANSFER_RESULT_EXCEEDS_CREDITS]
    r = await _unchanged(ledger, db_url, parties, lambda: ledger.Reserve(req))
    assert r.status == S.OPERATION_STATUS_INSUFFICIENT_FUNDS


async def test_payout_beyond_earnings_is_insufficient_funds(ledger, db_url, parties):
    """A provider cannot pay out more than it earned."""
    _, provider, *_ = parties
    r = await _unchanged(ledger, db_url, parties, lambda: ledger.Payout(
        pb.PayoutRequest(provider_account_id=provider, amount=1, idempotency_key="too-much")), burned=1)
    assert r.status == S.OPERATION_STATUS_INSUFFICIENT_FUNDS


async def test_settle_above_the_reservation_is_refused_then_a_valid_settle_works(ledger, db_url, parties):
    """Settle with cost > reserved answers EXCEEDS_RESERVATION with nothing
    moved; the hold stays open and a settle within it then applies."""
    consumer, provider, escrow, platform = parties
    job = new_id()
    r = await ledger.Reserve(pb.ReserveRequest(job_id=job, consumer_account_id=consumer, amount=100, timeout_s=60))
    assert r.status == S.OPERATION_STATUS_OK
    r = await _unchanged(ledger, db_url, parties, lambda: ledger.Settle(
        pb.SettleRequest(job_id=job, provider_account_id=provider, cost=101, fee_bps=1000)))
    assert r.status == S.OPERATION_STATUS_EXCEEDS_RESERVATION
    before = await balances(ledger, consumer, provider, escrow, platform)
    r = await ledger.Settle(pb.SettleRequest(job_id=job, provider_account_id=provider, cost=99, fee_bps=1000))
    assert (r.status, r.amount, r.fee, r.provider_amount) == (S.OPERATION_STATUS_OK, 99, 9, 90)
    (c, p, e, f) = await balances(ledger, consumer, provider, escrow, platform)
    assert c[0] == before[0][0] - 100 and c[1] == before[0][1] + 99
    assert p[3] == before[1][3] + 90 and f[3] == before[3][3] + 9
    assert e[2] == before[2][2] - 100 and e[3] - e[1] == 0


async def test_settle_and_release_of_resolved_or_unknown_holds(ledger, db_url, parties):
    """Settle or release of a job never reserved: HOLD_NOT_FOUND; of a job
    released: HOLD_ALREADY_RESOLVED; a settle retried with a different cost:
    CONFLICT. None of them moves anything."""
    consumer, provider, *_ = parties
    r = await _unchanged(ledger, db_url, parties, lambda: ledger.Settle(
        pb.SettleRequest(job_id=new_id(), provider_account_id=provider, cost=1)))
    assert r.status == S.OPERATION_STATUS_HOLD_NOT_FOUND
    r = await _unchanged(ledger, db_url, parties, lambda: ledger.Release(pb.ReleaseRequest(job_id=new_id())))
    assert r.status == S.OPERATION_STATUS_HOLD_NOT_FOUND

    released = new_id()
    await ledger.Reserve(pb.ReserveRequest(job_id=released, consumer_account_id=consumer, amount=10, timeout_s=60))
    assert (await ledger.Release(pb.ReleaseRequest(job_id=released))).status == S.OPERATION_STATUS_OK
    r = await _unchanged(ledger, db_url, parties, lambda: ledger.Settle(
        pb.SettleRequest(job_id=released, provider_account_id=provider, cost=5)))
    assert r.status == S.OPERATION_STATUS_HOLD_ALREADY_RESOLVED
    r = await _unchanged(ledger, db_url, parties, lambda: ledger.Release(pb.ReleaseRequest(job_id=released)))
    assert r.status == S.OPERATION_STATUS_ALREADY_APPLIED

    settled = new_id()
    await ledger.Reserve(pb.ReserveRequest(job_id=settled, consumer_account_id=consumer, amount=10, timeout_s=60))
    st = pb.SettleRequest(job_id=settled, provider_account_id=provider, cost=7, fee_bps=2000)
    assert (await ledger.Settle(st)).status == S.OPERATION_STATUS_OK
    st.cost = 8
    r = await _unchanged(ledger, db_url, parties, lambda: ledger.Settle(st))
    assert r.status == S.OPERATION_STATUS_CONFLICT
    r = await _unchanged(ledger, db_url, parties, lambda: ledger.Release(pb.ReleaseRequest(job_id=settled)))
    assert r.status == S.OPERATION_STATUS_HOLD_ALREADY_RESOLVED


async def test_topup_with_a_reused_key_and_different_amount_is_a_conflict(ledger, db_url, parties):
    """The same idempotency key with a different body changes nothing."""
    consumer, *_ = parties
    r = await ledger.TopUp(pb.TopUpRequest(account_id=consumer, amount=5, idempotency_key="mkt-reused"))
    assert r.status == S.OPERATION_STATUS_OK
    r = await _unchanged(ledger, db_url, parties, lambda: ledger.TopUp(
        pb.TopUpRequest(account_id=consumer, amount=6, idempotency_key="mkt-reused")))
    assert r.status == S.OPERATION_STATUS_CONFLICT


async def test_books_verify_after_the_marketplace_bad_input(ledger, db_url, parties):
    """Nothing refused above left the books inconsistent (escrow invariant included)."""
    rep = await run_verify(db_url)
    assert rep.ok, rep.problems
