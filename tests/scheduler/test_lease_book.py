"""Credit leases against an oracle (Hypothesis): several scheduler replicas
hold leases on a few partners' credits and reserve concurrent jobs against
them, while leases renew, windows end, jobs finish in any order and replicas
crash. The oracle is the ledger (holds never beyond the balance) and the
usage records (only answered jobs). Checked after every step and at the end:

- no overspend: what the ledger charged plus what it holds never exceeds a
  partner's credits;
- exact totals: each lease is charged ceil(its answered jobs' exact costs);
- every answered job is billed once, and no unanswered job is billed.
"""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from idlegrid.scheduler.lease_book import PICOS_PER_MICRO, Lease, LeaseBook, micros_ceil

CONSUMERS = (b"a" * 16, b"b" * 16)
REPLICAS = 3
WINDOW_S = 5.0


class Ledger:
    """The ledger as the leases see it: holds granted only from what is available."""

    def __init__(self, credits: dict[bytes, int]) -> None:
        self.credits = dict(credits)
        self.charged = dict.fromkeys(credits, 0)
        self.holds: dict[bytes, tuple[bytes, int]] = {}  # lease id -> (consumer, amount)

    def available(self, consumer: bytes) -> int:
        held = sum(a for c, a in self.holds.values() if c == consumer)
        return self.credits[consumer] - self.charged[consumer] - held

    def hold(self, lease_id: bytes, consumer: bytes, amount_min: int, amount_max: int) -> int:
        amount = min(amount_max, self.available(consumer))
        if amount < amount_min:
            return 0
        self.holds[lease_id] = (consumer, amount)
        return amount

    def post(self, lease_id: bytes, micros: int) -> None:
        consumer, amount = self.holds.pop(lease_id)
        assert micros <= amount, "a lease posted for more than it holds"
        self.charged[consumer] += micros


class Leases(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.ledger = Ledger({CONSUMERS[0]: 50, CONSUMERS[1]: 2_000})
        self.books = [LeaseBook() for _ in range(REPLICAS)]
        self.alive = [True] * REPLICAS
        self.ids = itertools.count(1)
        self.records: dict[bytes, list[int]] = {}  # lease id -> exact costs of its answered jobs
        self.leases: dict[bytes, Lease] = {}
        self.cleared: set[bytes] = set()
        self.answered = 0
        self.billed_jobs = 0

    def _clear(self, lease: Lease) -> None:
        costs = self.records.get(lease.lease_id, [])
        self.ledger.post(lease.lease_id, micros_ceil(sum(costs)))
        self.cleared.add(lease.lease_id)
        self.billed_jobs += len(costs)

    @rule(replica=st.integers(0, REPLICAS - 1), consumer=st.sampled_from(CONSUMERS),
          want=st.integers(1, 400))
    def open_lease(self, replica, consumer, want):
        if not self.alive[replica]:
            return
        lease_id = next(self.ids).to_bytes(16, "big")
        amount = self.ledger.hold(lease_id, consumer, 1, want)
        if amount:
            lease = Lease(lease_id, consumer, amount, use_until=self.now + WINDOW_S)
            self.leases[lease_id] = lease
            self.books[replica].install(lease)

    @rule(target=jobs, replica=st.integers(0, REPLICAS - 1), consumer=st.sampled_from(CONSUMERS),
          micros=st.integers(1, 60))
    def start_job(self, replica, consumer, micros):
        if not self.alive[replica]:
            return None
        r = self.books[replica].reserve(consumer, micros, self.now)
        return None if r is None else (replica, r)

    @rule(job=consumes(jobs), share=st.floats(0, 1), answered=st.booleans())
    def finish_job(self, job, share, answered):
        if job is None:
            return
        replica, r = job
        if not self.alive[replica]:
            return  # the replica crashed mid-job: never answered, never billed
        cost = int(r.micros * PICOS_PER_MICRO * share) if answered else 0
        self.books[replica].finish(r, cost)
        if answered:
            self.records.setdefault(r.lease.lease_id, []).append(cost)
            self.answered += 1

    @rule(dt=st.floats(0.1, 3.0))
    def tick(self, dt):
        self.now += dt
        for i, book in enumerate(self.books):
            if self.alive[i]:
                book.close_expired(self.now)
                for lease in book.take_done():
                    self._clear(lease)

    @rule(replica=st.integers(0, REPLICAS - 1), consumer=st.sampled_from(CONSUMERS))
    def close_idle(self, replica, consumer):
        if self.alive[replica]:
            self.books[replica].close(consumer)
            for lease in self.books[replica].take_done():
                self._clear(lease)

    @precondition(lambda self: sum(self.alive) > 1)
    @rule(replica=st.integers(0, REPLICAS - 1))
    def crash(self, replica):
        """SIGKILL: metering clears the replica's leases from the records it has."""
        if not self.alive[replica]:
            return
        self.alive[replica] = False
        book = self.books[replica]
        for lease in [*book.current.values(), *book.closing.values()]:
            self._clear(lease)

    @invariant()
    def no_overspend(self):
        for c in CONSUMERS:
            assert self.ledger.available(c) >= 0
            for book in self.books:
                lease = book.current.get(c)
                if lease is not None:
                    assert lease.free >= 0

    def teardown(self):
        for i, book in enumerate(self.books):
            if self.alive[i]:
                # jobs still in flight at the end were never answered: as after a crash
                for lease in [*book.current.values(), *book.closing.values()]:
                    self._clear(lease)
        for lease_id in self.records:
            assert lease_id in self.cleared, "an answered job's lease was never cleared"
        charged = sum(self.ledger.charged.values())
        exact = sum(micros_ceil(sum(costs)) for costs in self.records.values())
        assert charged == exact, "each lease charged ceil(its answered jobs' exact costs)"
        assert self.billed_jobs == self.answered, "every answered job billed once"
        for c in CONSUMERS:
            assert self.ledger.charged[c] <= self.ledger.credits[c]


TestLeases = Leases.TestCase
TestLeases.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)


def test_a_job_costing_more_than_its_reservation_is_a_bug():
    book = LeaseBook()
    book.install(Lease(b"l" * 16, b"c" * 16, 10, use_until=10.0))
    r = book.reserve(b"c" * 16, 3, 0.0)
    try:
        book.finish(r, 3 * PICOS_PER_MICRO + 1)
    except ValueError:
        pass
    else:
        raise AssertionError("accepted a cost above the reservation")


def test_rounding_happens_once_per_lease():
    book = LeaseBook()
    lease = Lease(b"l" * 16, b"c" * 16, 100, use_until=10.0)
    book.install(lease)
    for _ in range(20):  # 20 jobs of 0.05 µcr each: 1 µcr in all, not 20
        book.finish(book.reserve(b"c" * 16, 1, 0.0), PICOS_PER_MICRO // 20)
    assert micros_ceil(lease.spent_picos) == 1 and lease.free == 99
