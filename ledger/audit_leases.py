"""The books of credit leases and batched clearing, for ``idlegrid ledger
verify`` (see idlegrid.ledger.leases and idlegrid.ledger.aggregates): fed
every transfer in seq order, it checks

- a lease is a pending consumer -> escrow:jobs transfer without a timeout
  (that it ends at most once, posted for at most its hold, the replay of
  idlegrid.ledger.audit checks for every pending transfer);
- each clearing chain (one ClearWindow) balances: what its leases charged is
  exactly what its node aggregates and its fee pay out;
- a held aggregate that ended was released in full, or voided with refunds
  (escrow:jobs -> consumers, one per consumer, ids derived from the
  aggregate) summing exactly to it; every refund that names an aggregate is
  such a refund.

Escrow's posted balance equal to everything it holds (held aggregates and
legacy held earnings) is checked once for both by
idlegrid.ledger.audit_earnings. An earning or fee is a legacy per-job one when
its user_data names a job with a reservation (RESERVE), else it belongs to a
clearing window.

idlegrid.ledger.audit_clearing then proves each root prefix and amount
against metering's usage records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from idlegrid.ledger.aggregates import ESCROW, aggregate_refund_id
from idlegrid.ledger.codes import (
    CODE_EARNING,
    CODE_FEE,
    CODE_LEASE,
    CODE_REFUND,
    LINKED,
    PENDING,
    POST,
    VOID,
)
from idlegrid.ledger.values import StoredTransfer


@dataclass
class LeaseEntry:
    """One lease: its hold, and how it was cleared (``charge`` None while open, 0 when voided)."""

    lease_id: bytes
    consumer_account_id: bytes
    held: int
    user_data: bytes  # the replica that opened it
    charge: int | None = None
    root_prefix: bytes = b""  # the clearing transfer's user_data
    seq: int = 0  # of the clearing transfer


@dataclass
class AggregateEntry:
    """One node aggregate of a window: ``state`` is "posted" (never held),
    "held", "released" or "voided"; ``refunds`` by consumer, when voided."""

    aggregate_id: bytes
    provider_account_id: bytes
    amount: int
    root_prefix: bytes
    state: str
    seq: int
    refunds: dict[bytes, int] = field(default_factory=dict)


@dataclass
class FeeEntry:
    """One window's fee transfer (id = the window id)."""

    window_id: bytes
    amount: int
    root_prefix: bytes
    seq: int


@dataclass
class ClearingBooks:
    """Every lease, node aggregate and window fee in the books, by id."""

    leases: dict[bytes, LeaseEntry] = field(default_factory=dict)
    aggregates: dict[bytes, AggregateEntry] = field(default_factory=dict)
    fees: dict[bytes, FeeEntry] = field(default_factory=dict)


@dataclass
class LeaseAudit:
    report: Callable[[str], None]
    is_job: Callable[[bytes], bool]  # user_data that names a reserved job (a legacy per-job transfer)
    books: ClearingBooks = field(default_factory=ClearingBooks)
    _chain: list[int] = field(default_factory=lambda: [0, 0, 0])  # [clearings, charged, paid] of the open chain
    _chain_seq: int = 0

    def transfer(self, t: StoredTransfer) -> bool:
        """Takes one transfer; True when it is clearing's (the earnings audit skips it)."""
        taken = self._take(t)
        if not t.flags & LINKED:
            self._end_chain(t.seq)
        return taken

    def _take(self, t: StoredTransfer) -> bool:
        b = self.books
        if t.code == CODE_LEASE:
            self._lease(t)
            return True
        if t.debit_account_id != ESCROW:
            return False
        if t.flags & (POST | VOID):
            agg = b.aggregates.get(t.pending_id)
            if agg is None:
                return False
            if t.flags & POST:
                agg.state = "released"
                if t.amount != agg.amount:
                    self.report(f"seq {t.seq}: aggregate {agg.aggregate_id.hex()} released for {t.amount} "
                                f"of {agg.amount}")
            else:
                agg.state = "voided"
            return True
        if t.code == CODE_EARNING and not self.is_job(t.user_data):
            b.aggregates[t.id] = AggregateEntry(t.id, t.credit_account_id, t.amount, t.user_data,
                                                "held" if t.flags & PENDING else "posted", t.seq)
            self._pays(t)
            return True
        if t.code == CODE_FEE and not self.is_job(t.user_data):
            b.fees[t.id] = FeeEntry(t.id, t.amount, t.user_data, t.seq)
            self._pays(t)
            return True
        if t.code == CODE_REFUND and t.user_data in b.aggregates:
            agg = b.aggregates[t.user_data]
            if agg.state != "voided":
                self.report(f"seq {t.seq}: refund of aggregate {agg.aggregate_id.hex()}, which is {agg.state}")
            elif t.id != aggregate_refund_id(agg.aggregate_id, t.credit_account_id) or \
                    t.credit_account_id in agg.refunds:
                self.report(f"seq {t.seq}: refund of aggregate {agg.aggregate_id.hex()} is not its one refund "
                            "to that consumer")
            agg.refunds[t.credit_account_id] = agg.refunds.get(t.credit_account_id, 0) + t.amount
            return True
        return False

    def _lease(self, t: StoredTransfer) -> None:
        leases = self.books.leases
        if t.flags & PENDING:
            if t.credit_account_id != ESCROW or t.debit_account_id == ESCROW or t.timeout_s:
                self.report(f"seq {t.seq}: lease {t.id.hex()} is not a consumer -> escrow:jobs hold without "
                            "a timeout")
            leases[t.id] = LeaseEntry(t.id, t.debit_account_id, t.amount, t.user_data)
            return
        lease = leases.get(t.pending_id)
        if lease is None or not t.flags & (POST | VOID):
            self.report(f"seq {t.seq}: LEASE transfer {t.id.hex()} is neither a lease nor its clearing")
            return
        lease.charge = t.amount if t.flags & POST else 0
        lease.root_prefix, lease.seq = t.user_data, t.seq
        self._chain[0] += 1
        self._chain[1] += lease.charge
        self._chain_seq = self._chain_seq or t.seq

    def _pays(self, t: StoredTransfer) -> None:
        self._chain[2] += t.amount
        self._chain_seq = self._chain_seq or t.seq

    def _end_chain(self, seq: int) -> None:
        clearings, charged, paid = self._chain
        if (clearings or paid) and charged != paid:
            self.report(f"seq {self._chain_seq}..{seq}: a clearing window charges {charged} but pays {paid}")
        self._chain[:] = [0, 0, 0]
        self._chain_seq = 0

    def end(self) -> None:
        for agg in self.books.aggregates.values():
            refunded = sum(agg.refunds.values())
            if agg.state == "voided" and refunded != agg.amount:
                self.report(f"aggregate {agg.aggregate_id.hex()}: voided {agg.amount} but refunded {refunded}")
