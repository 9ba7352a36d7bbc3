"""Credit leases and batched clearing: the ledger's work grows with partners
and clearing windows, not with jobs.

| operation | transfers (debit -> credit) |
|---|---|
| open a lease | pending consumer -> escrow:jobs (code LEASE, id = lease_id, no timeout), for what is available |
| clear a window (one linked chain) | post each lease for its charge (0: void it); escrow:jobs -> provider per node aggregate (EARNING, pending while held); escrow:jobs -> platform:revenue (FEE, id = window_id) |

OpenLease decides its amount inside the single writer (a balancing debit:
min(amount_max, available) if at least amount_min), so two leases never hold
more than the balance. A refusal (INSUFFICIENT_FUNDS) writes nothing and does
not burn the lease id: the same lease id may be retried once credits are
free. ClearWindow is one request of one linked chain asking for a whole
chain: all of it is new, or all of it is there already (ALREADY_APPLIED), or
nothing is written (a retry with other contents is a CONFLICT).
"""

from __future__ import annotations

from dataclasses import dataclass

from idlegrid.common.errors import InvalidArgument, NotFound
from idlegrid.common.money import AMOUNT_MAX
from idlegrid.ledger.codes import (
    CODE_EARNING,
    CODE_FEE,
    CODE_LEASE,
    LEDGER_CREDITS,
    LINKED,
    PENDING,
    POST,
    VOID,
    R,
)
from idlegrid.ledger.ids import ESCROW, REVENUE, derive
from idlegrid.ledger.market import status_of
from idlegrid.ledger.v1 import ledger_pb2 as pb
from idlegrid.ledger.values import Transfer
from idlegrid.ledger.writer import BatchWriter

S = pb.OperationStatus
WINDOW_ITEMS_MAX = 4000  # leases, and node aggregates, per window
ROOT_PREFIX_LEN = 16


def lease_clear_id(lease_id: bytes) -> bytes:
    """The transfer that clears a lease: its post, or its void for a charge of 0."""
    return derive("lease-clear", lease_id)


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    status: int
    amount: int = 0
    available: int = 0
    held_elsewhere: int = 0


@dataclass(frozen=True, slots=True)
class LeaseCharge:
    lease_id: bytes
    amount: int
    root_prefix: bytes


@dataclass(frozen=True, slots=True)
class NodeAggregate:
    aggregate_id: bytes
    provider_account_id: bytes
    amount: int
    root_prefix: bytes
    hold: bool


@dataclass(frozen=True, slots=True)
class Window:
    window_id: bytes
    leases: list[LeaseCharge]
    aggregates: list[NodeAggregate]
    fee: int
    fee_root_prefix: bytes


@dataclass(frozen=True, slots=True)
class Cleared:
    status: int
    transfer_ids: list[bytes]
    results: list[int]


def _id16(b: bytes, what: str) -> bytes:
    if len(b) != 16 or b == bytes(16):
        raise InvalidArgument(f"{what} must be 16 non-zero bytes")
    return b


def _prefix(b: bytes, what: str) -> bytes:
    if len(b) != ROOT_PREFIX_LEN:
        raise InvalidArgument(f"{what} must be {ROOT_PREFIX_LEN} bytes (the Merkle root's prefix)")
    return b


def _within(a: int, low: int, what: str) -> int:
    if not low <= a <= AMOUNT_MAX:
        raise InvalidArgument(f"{what} must be in [{low}, {AMOUNT_MAX}] micro-credits, got {a}")
    return a


def window_chain(w: Window) -> list[Transfer]:
    """The window's one linked chain, lease clearings first (escrow is
    credited before it pays), after checking every field and the balance."""
    _id16(w.window_id, "window_id")
    if not 1 <= len(w.leases) <= WINDOW_ITEMS_MAX:
        raise InvalidArgument(f"leases: between 1 and {WINDOW_ITEMS_MAX} per window, got {len(w.leases)}")
    if len(w.aggregates) > WINDOW_ITEMS_MAX:
        raise InvalidArgument(f"aggregates: at most {WINDOW_ITEMS_MAX} per window, got {len(w.aggregates)}")
    ids = [w.window_id] + [_id16(c.lease_id, "lease_id") for c in w.leases] + [
        _id16(a.aggregate_id, "aggregate_id") for a in w.aggregates]
    if len(set(ids)) != len(ids):
        raise InvalidArgument("window_id, lease_ids and aggregate_ids must all differ")
    fee = _within(w.fee, 0, "fee")
    charged = sum(_within(c.amount, 0, "a lease's amount") for c in w.leases)
    paid = sum(_within(a.amount, 1, "an aggregate's amount") for a in w.aggregates)
    if charged != paid + fee:
        raise InvalidArgument(f"the leases charge {charged} but the aggregates and the fee pay {paid + fee}")
    chain = []
    for c in w.leases:
        prefix = _prefix(c.root_prefix, "a lease's root_prefix")
        chain.append(Transfer(id=lease_clear_id(c.lease_id), pending_id=c.lease_id, amount=c.amount,
                              credit_account_id=ESCROW, user_data=prefix, ledger=LEDGER_CREDITS, code=CODE_LEASE,
                              flags=(POST if c.amount else VOID) | LINKED))
    for a in w.aggregates:
        chain.append(Transfer(id=a.aggregate_id, debit_account_id=ESCROW,
                              credit_account_id=_id16(a.provider_account_id, "provider_account_id"),
                              amount=a.amount, user_data=_prefix(a.root_prefix, "an aggregate's root_prefix"),
                              ledger=LEDGER_CREDITS, code=CODE_EARNING, flags=LINKED | (PENDING if a.hold else 0)))
    if fee:
        chain.append(Transfer(id=w.window_id, debit_account_id=ESCROW, credit_account_id=REVENUE, amount=fee,
                              user_data=_prefix(w.fee_root_prefix, "fee_root_prefix"), ledger=LEDGER_CREDITS,
                              code=CODE_FEE, flags=LINKED))
    chain[-1].flags &= ~LINKED
    return chain


_NOT_A_LEASE = frozenset({
    R.PENDING_TRANSFER_NOT_FOUND, R.PENDING_TRANSFER_NOT_PENDING, R.PENDING_TRANSFER_HAS_DIFFERENT_CODE,
    R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID, R.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER,
})


def window_status(results: list[int]) -> int:
    """One status for the window's chain, from the cause of its failure."""
    causes = [r for r in results if r != R.LINKED_EVENT_FAILED] or results
    if all(r == R.OK for r in causes):
        return S.OPERATION_STATUS_OK
    if all(r == R.EXISTS for r in causes):
        # A chain partly there already was rolled back: cleared before with other contents.
        return S.OPERATION_STATUS_CONFLICT if R.LINKED_EVENT_FAILED in results else \
            S.OPERATION_STATUS_ALREADY_APPLIED
    cause = next(r for r in causes if r not in (R.OK, R.EXISTS))
    if cause in _NOT_A_LEASE:
        return S.OPERATION_STATUS_HOLD_NOT_FOUND
    return status_of([cause])


class Leases:
    def __init__(self, writer: BatchWriter) -> None:
        self._writer = writer

    async def open(self, *, lease_id: bytes, consumer_account_id: bytes, amount_min: int, amount_max: int,
                   user_data: bytes = b"") -> LeaseGrant:
        """Holds min(amount_max, the consumer's available credits) if at least
        amount_min, decided in the writer. ALREADY_APPLIED answers the amount
        first granted (available and held_elsewhere are then the consumer's
        now, this lease included while it is open)."""
        lease = _id16(lease_id, "lease_id")
        consumer = _id16(consumer_account_id, "consumer_account_id")
        _within(amount_min, 1, "amount_min")
        if not amount_min <= amount_max <= AMOUNT_MAX:
            raise InvalidArgument(f"amount_max must be in [amount_min, {AMOUNT_MAX}], got {amount_max}")
        if len(user_data) not in (0, 16):
            raise InvalidArgument("user_data must be 0 or 16 bytes")
        t = Transfer(id=lease, debit_account_id=consumer, credit_account_id=ESCROW, amount=amount_max,
                     user_data=user_data, ledger=LEDGER_CREDITS, code=CODE_LEASE, flags=PENDING,
                     amount_min=amount_min)
        notes: dict[bytes, tuple[int, int, int]] = {}
        (r,) = await self._writer.submit([t], notes=notes)
        amount, available, pending = notes.get(lease, (0, 0, 0))
        if r == R.OK:
            return LeaseGrant(S.OPERATION_STATUS_OK, amount, available, pending)
        if r == R.EXISTS:
            return LeaseGrant(S.OPERATION_STATUS_ALREADY_APPLIED, amount, available, pending)
        if r == R.EXCEEDS_CREDITS:
            return LeaseGrant(S.OPERATION_STATUS_INSUFFICIENT_FUNDS, 0, available, pending)
        if r in (R.EXISTS_WITH_DIFFERENT_FIELDS, R.ID_ALREADY_FAILED):
            return LeaseGrant(S.OPERATION_STATUS_CONFLICT)
        if r == R.DEBIT_ACCOUNT_NOT_FOUND:
            raise NotFound("consumer account not found")
        return LeaseGrant(status_of([r]))

    async def clear(self, window: Window) -> Cleared:
        """Clears one window in one commit, all or nothing (see the module's doc)."""
        chain = window_chain(window)
        results = await self._writer.submit(chain, whole_chains=True)
        return Cleared(window_status(results), [t.id for t in chain], results)
