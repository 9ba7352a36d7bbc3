"""Concurrency: 32 clients at once send random transfers, holds, posts and
voids, chains, exact duplicates (also at the same instant) and overdraft
attempts against flagged accounts, all group-committed together. Afterwards
every id was applied at most once and exactly when some answer said OK, no
balance breaks its flags, each hold resolved at most once, debits equal
credits, the balances equal the sum of the applied transfers, and verify passes."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest

from idlegrid.ledger.v1 import ledger_pb2 as pb
from tests.ledger.support import (
    CMNED,
    DMNEC,
    LINKED,
    PENDING,
    POST,
    VOID,
    account,
    balances,
    create,
    create_accounts,
    post,
    row_counts,
    run_verify,
    transfer,
    void,
)

CLIENTS = 32
REQUESTS_PER_CLIENT = 40
FUNDING = 1_000
OK = pb.CREATE_TRANSFER_RESULT_OK
EXISTS = pb.CREATE_TRANSFER_RESULT_EXISTS
R = pb.CreateTransferResult


class Load:
    """The shared state of the clients: what was sent and every answer."""

    def __init__(self, consumers, providers, sink):
        self.consumers = [c.id for c in consumers]
        self.providers = [p.id for p in providers]
        self.sink = sink.id
        self.sent: list[list[pb.Transfer]] = []  # every request (for duplicates)
        self.answers: list[tuple[list[pb.Transfer], list[int]]] = []
        self.pendings: list[pb.Transfer] = []  # holds known to exist

    def new_request(self, rnd: random.Random) -> list[pb.Transfer]:
        kind = rnd.random()
        if kind < 0.35 and self.sent:  # an exact duplicate of something sent (maybe still in flight)
            return self.sent[rnd.randrange(len(self.sent))]
        if kind < 0.55 and self.pendings:  # resolve a hold (others may race for the same one)
            p = self.pendings[rnd.randrange(len(self.pendings))]
            if rnd.random() < 0.5:
                return [post(p.id, rnd.randint(1, p.amount + 5))]  # sometimes more than held
            return [void(p.id)]
        n = rnd.choice((1, 1, 1, 2, 3, 5))
        linked = n > 1 and rnd.random() < 0.4
        items = []
        for i in range(n):
            dr = rnd.choice(self.consumers + self.providers)
            cr = rnd.choice([a for a in self.consumers + self.providers + [self.sink] if a != dr])
            flags = PENDING if rnd.random() < 0.3 else 0
            if linked and i < n - 1:
                flags |= LINKED
            items.append(transfer(dr, cr, rnd.randint(1, 400), flags=flags, timeout_s=0))
        return items

    async def client(self, stub, seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(REQUESTS_PER_CLIENT):
            req = self.new_request(rnd)
            self.sent.append(req)
            r = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=req))
            results = list(r.results)
            assert len(results) == len(req)
            self.answers.append((req, results))
            for t, res in zip(req, results, strict=True):
                if res == OK and t.flags & PENDING:
                    self.pendings.append(t)
            if rnd.random() < 0.2:
                await asyncio.sleep(0)


@pytest.fixture(scope="module")
async def load(ledger, db_url):
    """Runs the concurrent load once for the module; returns it."""
    source = account()
    consumers = [account(flags=DMNEC) for _ in range(8)]
    providers = [account(pb.ACCOUNT_KIND_PROVIDER, DMNEC) for _ in range(4)]
    sink = account(pb.ACCOUNT_KIND_EXTERNAL, CMNED)  # capped: credits must not exceed its debits
    await create_accounts(ledger, source, sink, *consumers, *providers)
    assert await create(ledger, *[transfer(source.id, c.id, FUNDING) for c in consumers]) == ["OK"] * 8
    assert await create(ledger, transfer(sink.id, source.id, 600)) == ["OK"]  # lets the sink take 600
    ld = Load(consumers, providers, sink)
    ld.accounts = [source, sink, *consumers, *providers]
    ld.rows_before = await row_counts(db_url)

    # A thundering herd first: every client sends the same 16 requests at the same instant.
    herd_rnd = random.Random(7)
    herd = [ld.new_request(herd_rnd) for _ in range(16)]
    ld.sent.extend(herd)

    async def herd_client(seed: int) -> None:
        order = herd[:]
        random.Random(seed).shuffle(order)
        rs = await asyncio.gather(*[ledger.CreateTransfers(pb.CreateTransfersRequest(transfers=req)) for req in order])
        for req, r in zip(order, rs, strict=True):
            ld.answers.append((req, list(r.results)))

    await asyncio.gather(*[herd_client(1000 + i) for i in range(CLIENTS)])
    await asyncio.gather(*[ld.client(ledger, i) for i in range(CLIENTS)])
    return ld


async def _applied(ledger, ids) -> dict[bytes, pb.Transfer]:
    ids = list(ids)
    found: dict[bytes, pb.Transfer] = {}
    for i in range(0, len(ids), 8000):
        r = await ledger.LookupTransfers(pb.LookupTransfersRequest(ids=ids[i:i + 8000]))
        found.update({t.id: t for t in r.transfers})
    return found


async def test_every_id_applied_once_exactly_when_an_answer_said_ok(ledger, db_url, load):
    """Per id over all answers: at most one OK; the id is stored iff one
    answer said OK; EXISTS only for stored ids, ID_ALREADY_FAILED only for
    ids refused by a business rule; the table grew by exactly the OKs."""
    by_id: dict[bytes, list[int]] = defaultdict(list)
    bodies: dict[bytes, pb.Transfer] = {}
    for req, results in load.answers:
        for t, r in zip(req, results, strict=True):
            by_id[t.id].append(r)
            bodies[t.id] = t
    found = await _applied(ledger, by_id)
    burning = {R.Value(n) for n in ("CREATE_TRANSFER_RESULT_EXCEEDS_CREDITS",
                                    "CREATE_TRANSFER_RESULT_EXCEEDS_DEBITS")}
    for tid, rs in by_id.items():
        oks = rs.count(OK)
        assert oks <= 1, (tid.hex(), [R.Name(r) for r in rs])
        assert (tid in found) == (oks == 1), (tid.hex(), [R.Name(r) for r in rs])
        if EXISTS in rs:
            assert tid in found
        if pb.CREATE_TRANSFER_RESULT_ID_ALREADY_FAILED in rs:
            assert any(r in burning for r in rs) and tid not in found, [R.Name(r) for r in rs]
    stats = defaultdict(int)
    for rs in by_id.values():
        for r in rs:
            stats[R.Name(r)] += 1
    # The load did exercise what it is meant to (a sanity check on the generator, not on timing).
    for name in ("OK", "EXISTS", "EXCEEDS_CREDITS", "ID_ALREADY_FAILED", "LINKED_EVENT_FAILED"):
        assert stats[f"CREATE_TRANSFER_RESULT_{name}"] > 0, dict(stats)
    after = await row_counts(db_url)
    assert after["transfers"] - load.rows_before["transfers"] == len(found)


async def test_each_hold_resolves_at_most_once(ledger, load):
    """Concurrent posts and voids of the same hold: at most one of them is
    applied; the others answer ALREADY_POSTED / ALREADY_VOIDED (or EXISTS for
    an exact duplicate)."""
    ids = {t.id for req, _ in load.answers for t in req}
    found = await _applied(ledger, ids)
    per_pending = defaultdict(list)
    for t in found.values():
        if t.flags & (POST | VOID):
            per_pending[t.pending_id].append(t)
    assert per_pending, "no hold was resolved"
    for pid, res in per_pending.items():
        assert len(res) == 1, pid.hex()
        assert pid in found and found[pid].flags & PENDING
        if res[0].flags & POST:
            assert res[0].amount <= found[pid].amount
    losers = [r for _, rs in load.answers for r in rs
              if r in (pb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_ALREADY_POSTED,
                       pb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_ALREADY_VOIDED)]
    assert losers, "no two resolutions of one hold raced"


async def test_balances_are_the_sum_of_applied_transfers_and_respect_flags(ledger, db_url, load):
    """Every account's four balances equal what its applied transfers add up
    to; no flagged balance is overdrawn; across the accounts pending and
    posted debits equal credits; verify passes."""
    ids = {t.id for req, _ in load.answers for t in req}
    acct_ids = [a.id for a in load.accounts]
    history: dict[bytes, pb.Transfer] = {}
    for aid in acct_ids:
        after = 0
        while True:
            r = await ledger.GetAccountTransfers(pb.GetAccountTransfersRequest(
                account_id=aid, after_seq=after, limit=1000))
            history.update({t.id: t for t in r.transfers})
            if not r.next_seq:
                break
            after = r.next_seq
    found = await _applied(ledger, ids)
    assert set(found) <= set(history)  # every applied transfer is in the histories, nothing else is new
    expected = defaultdict(lambda: [0, 0, 0, 0])
    for t in sorted(history.values(), key=lambda t: t.seq):
        d, c = expected[t.debit_account_id], expected[t.credit_account_id]
        if t.flags & PENDING:
            d[0] += t.amount
            c[2] += t.amount
        elif t.flags & (POST | VOID):
            p = history[t.pending_id]
            d[0] -= p.amount
            c[2] -= p.amount
            if t.flags & POST:
                d[1] += t.amount
                c[3] += t.amount
        else:
            d[1] += t.amount
            c[3] += t.amount
    got = await balances(ledger, *acct_ids)
    for aid, (dp, dpo, cp, cpo), a in zip(acct_ids, got, load.accounts, strict=True):
        assert [dp, dpo, cp, cpo] == expected[aid], aid.hex()
        if a.flags & DMNEC:
            assert dp + dpo <= cpo, aid.hex()
        if a.flags & CMNED:
            assert cp + cpo <= dpo, aid.hex()
    assert sum(b[0] for b in got) == sum(b[2] for b in got)
    assert sum(b[1] for b in got) == sum(b[3] for b in got)
    rep = await run_verify(db_url)
    assert rep.ok, rep.problems
