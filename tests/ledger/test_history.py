"""History is append-only and queryable: LookupTransfers returns what was
written (the ledger fills in what post/void left out), GetAccountTransfers
pages an account's transfers in commit order both ways, and
GetAccountBalances replays the account's balances after each of them."""

from __future__ import annotations

import pytest

from idlegrid.ledger.v1 import ledger_pb2 as pb
from tests.ledger.support import (
    LINKED,
    PENDING,
    POST,
    VOID,
    account,
    balances,
    create,
    create_accounts,
    new_id,
    post,
    run_verify,
    transfer,
    void,
)


@pytest.fixture(scope="module")
async def story(ledger):
    """A history for account ``a`` of 23 transfers in several batches:
    plain both ways, a linked chain, pendings posted (partially) and voided,
    and transfers between other accounts interleaved (not in a's history).
    Returns (a, others, the ids touching a in commit order, the transfers
    sent by id, the requests sent)."""
    a, b, c = account(), account(), account()
    await create_accounts(ledger, a, b, c)
    sent: dict[bytes, pb.Transfer] = {}
    order: list[bytes] = []
    requests: list[tuple[pb.Transfer, ...]] = []

    async def send(*ts: pb.Transfer, expect: list[str] | None = None) -> None:
        got = await create(ledger, *ts)
        assert got == (expect or ["OK"] * len(ts))
        requests.append(ts)
        for t in ts:
            sent[t.id] = t
            if a.id in (t.debit_account_id, t.credit_account_id) or t.pending_id in pend_of_a:
                order.append(t.id)

    pend_of_a: set[bytes] = set()
    await send(transfer(b.id, a.id, 1_000))
    for i in range(5):
        await send(transfer(a.id, b.id, 10 + i), transfer(b.id, c.id, 1), transfer(c.id, a.id, 3 + i))
    p1 = transfer(a.id, c.id, 200, flags=PENDING, timeout_s=3600)
    p2 = transfer(b.id, a.id, 50, flags=PENDING)
    pend_of_a.update({p1.id, p2.id})
    await send(p1, p2)
    await send(transfer(c.id, b.id, 2))
    await send(post(p1.id, 120, flags=LINKED), transfer(a.id, b.id, 7, flags=LINKED), transfer(b.id, c.id, 5))
    await send(void(p2.id))
    for i in range(3):
        await send(transfer(a.id, c.id, 1 + i))
    return a, (b, c), order, sent, requests


async def _pages(ledger, account_id: bytes, limit: int, reversed_: bool, method="GetAccountTransfers"):
    pages, after = [], 0
    while True:
        if method == "GetAccountTransfers":
            r = await ledger.GetAccountTransfers(pb.GetAccountTransfersRequest(
                account_id=account_id, after_seq=after, limit=limit, reversed=reversed_))
            rows = list(r.transfers)
        else:
            r = await ledger.GetAccountBalances(pb.GetAccountBalancesRequest(
                account_id=account_id, after_seq=after, limit=limit, reversed=reversed_))
            rows = list(r.balances)
        pages.append(rows)
        assert len(rows) <= limit
        if not r.next_seq:
            return pages
        assert rows and r.next_seq == rows[-1].seq
        after = r.next_seq


@pytest.mark.parametrize("limit", [1, 4, 23, 1000])
async def test_account_transfers_page_forward_in_commit_order(ledger, story, limit):
    """Forward paging returns exactly the account's transfers, oldest first,
    with strictly increasing seq, each page at most ``limit`` rows."""
    a, _, order, _, _ = story
    pages = await _pages(ledger, a.id, limit, False)
    rows = [t for p in pages for t in p]
    assert [t.id for t in rows] == order
    seqs = [t.seq for t in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(len(p) == limit for p in pages[:-1])


@pytest.mark.parametrize("limit", [1, 5, 23, 1000])
async def test_account_transfers_page_backward_newest_first(ledger, story, limit):
    """Reversed paging (after_seq = "before" cursor) returns the same
    transfers, newest first."""
    a, _, order, _, _ = story
    rows = [t for p in await _pages(ledger, a.id, limit, True) for t in p]
    assert [t.id for t in rows] == order[::-1]


async def test_page_cursor_in_the_middle(ledger, story):
    """A cursor taken from any row continues right after (or before) it."""
    a, _, order, _, _ = story
    full = (await ledger.GetAccountTransfers(pb.GetAccountTransfersRequest(account_id=a.id, limit=1000))).transfers
    mid = full[10].seq
    fwd = await ledger.GetAccountTransfers(pb.GetAccountTransfersRequest(account_id=a.id, after_seq=mid, limit=3))
    assert [t.id for t in fwd.transfers] == order[11:14] and fwd.next_seq == fwd.transfers[-1].seq
    back = await ledger.GetAccountTransfers(pb.GetAccountTransfersRequest(
        account_id=a.id, after_seq=mid, limit=3, reversed=True))
    assert [t.id for t in back.transfers] == order[9:6:-1]
    default = await ledger.GetAccountTransfers(pb.GetAccountTransfersRequest(account_id=a.id))
    assert len(default.transfers) == len(order) and default.next_seq == 0  # limit 0 = 100


async def test_unknown_account_has_empty_history(ledger, story):
    """An account without transfers (or unknown) pages to nothing."""
    r = await ledger.GetAccountTransfers(pb.GetAccountTransfersRequest(account_id=new_id()))
    assert list(r.transfers) == [] and r.next_seq == 0
    r = await ledger.GetAccountBalances(pb.GetAccountBalancesRequest(account_id=new_id(), reversed=True))
    assert list(r.balances) == [] and r.next_seq == 0


def _replay(account_id: bytes, rows: list[pb.Transfer]) -> list[tuple[int, int, int, int]]:
    """The account's balances after each of its transfers, recomputed."""
    pend: dict[bytes, pb.Transfer] = {}
    dp = dpo = cp = cpo = 0
    out = []
    for t in rows:
        dr = t.debit_account_id == account_id
        if t.flags & PENDING:
            pend[t.id] = t
            if dr:
                dp += t.amount
            else:
                cp += t.amount
        elif t.flags & (POST | VOID):
            p = pend[t.pending_id]
            if dr:
                dp -= p.amount
                dpo += t.amount if t.flags & POST else 0
            else:
                cp -= p.amount
                cpo += t.amount if t.flags & POST else 0
        elif dr:
            dpo += t.amount
        else:
            cpo += t.amount
        out.append((dp, dpo, cp, cpo))
    return out


@pytest.mark.parametrize("limit", [3, 1000])
async def test_balance_history_matches_the_transfers(ledger, story, limit):
    """GetAccountBalances gives, for each of the account's transfers in commit
    order, the balances right after it; the last entry equals the account's
    current balances; reversed paging gives the same entries newest first."""
    a, others, order, _, _ = story
    rows = [t for p in await _pages(ledger, a.id, 1000, False) for t in p]
    hist = [b for p in await _pages(ledger, a.id, limit, False, "GetAccountBalances") for b in p]
    assert [h.transfer_id for h in hist] == order
    assert [h.seq for h in hist] == [t.seq for t in rows]
    got = [(h.debits_pending, h.debits_posted, h.credits_pending, h.credits_posted) for h in hist]
    assert got == _replay(a.id, rows)
    assert got[-1] == (await balances(ledger, a.id))[0]
    back = [b for p in await _pages(ledger, a.id, limit, True, "GetAccountBalances") for b in p]
    assert [h.seq for h in back] == [h.seq for h in hist][::-1]
    assert all(h.HasField("created_at") for h in hist)


async def test_lookup_transfers_returns_what_was_written(ledger, story):
    """LookupTransfers returns the found transfers in request order (unknown
    ids left out) with seq and created_at set, post/void filled in from their
    pending transfer, and the pending transfer itself unchanged after its post."""
    a, (b, c), order, sent, requests = story
    ids = [order[3], new_id(), order[0], order[-1]]
    r = await ledger.LookupTransfers(pb.LookupTransfersRequest(ids=ids))
    assert [t.id for t in r.transfers] == [order[3], order[0], order[-1]]
    for t in r.transfers:
        s = sent[t.id]
        assert (t.debit_account_id, t.credit_account_id, t.amount, t.flags, t.ledger, t.code) == (
            s.debit_account_id, s.credit_account_id, s.amount, s.flags, s.ledger, s.code)
        assert t.seq > 0 and t.HasField("created_at")
    pendings = [t for t in sent.values() if t.flags & PENDING]
    resolutions = [t for t in sent.values() if t.flags & (POST | VOID)]
    r = await ledger.LookupTransfers(pb.LookupTransfersRequest(ids=[t.id for t in pendings + resolutions]))
    got = {t.id: t for t in r.transfers}
    for p in pendings:
        g = got[p.id]
        assert (g.flags, g.amount, g.timeout_s, g.pending_id) == (PENDING, p.amount, p.timeout_s, b"")
    for x in resolutions:
        g, p = got[x.id], sent[x.pending_id]
        assert (g.debit_account_id, g.credit_account_id, g.ledger, g.code) == (
            p.debit_account_id, p.credit_account_id, p.ledger, p.code)
        assert g.pending_id == p.id and g.seq > got[p.id].seq
        assert g.amount == (x.amount if x.flags & POST else p.amount)  # a void records the amount released
    seqs = sorted(t.seq for t in (await ledger.LookupTransfers(pb.LookupTransfersRequest(ids=list(sent)))).transfers)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # gap-free commit order


async def test_resending_history_changes_nothing(ledger, db_url, story):
    """Every request of the story sent again (same ids, same fields, chains
    whole) answers EXISTS per item, also the posts and voids of holds resolved
    long ago; the history and balances stay exactly as they were."""
    a, (b, c), order, sent, requests = story
    before_hist = [t for p in await _pages(ledger, a.id, 1000, False) for t in p]
    before_bal = await balances(ledger, a.id, b.id, c.id)
    for ts in requests:
        assert await create(ledger, *ts) == ["EXISTS"] * len(ts)
    all_at_once = [t for ts in requests for t in ts]
    assert await create(ledger, *all_at_once) == ["EXISTS"] * len(all_at_once)
    assert [t for p in await _pages(ledger, a.id, 1000, False) for t in p] == before_hist
    assert await balances(ledger, a.id, b.id, c.id) == before_bal
    rep = await run_verify(db_url)
    assert rep.ok, rep.problems
