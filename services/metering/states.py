"""The settlement of a usage record as an explicit state machine.

                ┌──▶ SETTLED   cost > 0: the cost charged, provider and platform paid
                ├──▶ RELEASED  cost = 0: nothing charged, the hold voided (or expired)
    PENDING ────┼──▶ EXPIRED   the hold expired before settlement: nothing charged
      │  ▲      └──▶ REJECTED  the ledger refused it (see settlement_error)
      └──┘ retry later (the ledger was unavailable)

A record is stored PENDING, in the same write that queues it in the outbox;
the settlement worker moves it once to a final state, and a final state never
changes. Every change goes through :func:`check`; a change the table does not
allow is a bug and raises. The database holds the same rules as CHECK
constraints (metering/migrations/002_settlement_states.sql).
"""

from __future__ import annotations

from enum import IntEnum

from idlegrid.metering.v1 import metering_pb2 as pb


class Settlement(IntEnum):
    """The column ``metering.usage.settlement``; the values of the proto's SettlementState."""

    PENDING = pb.SETTLEMENT_STATE_PENDING
    SETTLED = pb.SETTLEMENT_STATE_SETTLED
    RELEASED = pb.SETTLEMENT_STATE_RELEASED
    EXPIRED = pb.SETTLEMENT_STATE_EXPIRED
    REJECTED = pb.SETTLEMENT_STATE_REJECTED


PENDING = Settlement.PENDING
SETTLED = Settlement.SETTLED
RELEASED = Settlement.RELEASED
EXPIRED = Settlement.EXPIRED
REJECTED = Settlement.REJECTED

ALLOWED: dict[Settlement, frozenset[Settlement]] = {
    PENDING: frozenset({PENDING, SETTLED, RELEASED, EXPIRED, REJECTED}),  # PENDING → PENDING: a retry
    SETTLED: frozenset(),
    RELEASED: frozenset(),
    EXPIRED: frozenset(),
    REJECTED: frozenset(),
}
FINAL = frozenset(s for s, nxt in ALLOWED.items() if not nxt)


class IllegalTransition(AssertionError):
    """A settlement change the machine does not allow: a bug, never user input."""


def check(src: Settlement, dst: Settlement, *, cost_micros: int) -> None:
    """Raises unless a record of ``cost_micros`` may go from ``src`` to ``dst``:
    only a cost is SETTLED, and only a zero cost is RELEASED."""
    if dst not in ALLOWED[src]:
        raise IllegalTransition(f"settlement {src.name} → {dst.name} is not allowed")
    if dst == SETTLED and cost_micros <= 0:
        raise IllegalTransition("a record without a cost cannot be SETTLED (it is RELEASED)")
    if dst == RELEASED and cost_micros != 0:
        raise IllegalTransition("a record with a cost cannot be RELEASED")
