"""A settled job's provider share as an explicit state machine.

    NONE ──settled, window 0──▶ POSTED                    (available at once)
    NONE ──settled────────────▶ HELD ──window over──────▶ RELEASED   (available)
                                  └──node's earnings voided──▶ VOIDED  (refunded to the partner)

NONE: no earning (not settled yet, or nothing for the provider). The
settlement worker moves a record out of NONE in the same write that makes it
SETTLED; the earnings worker moves HELD to RELEASED or VOIDED after the ledger
applied it, and the ledger lets only one of the two happen. RELEASED, VOIDED
and POSTED are final. Every change goes through :func:`check`; the database
holds the same rules (metering/migrations/003_earnings.sql).
"""

from __future__ import annotations

from enum import IntEnum

from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering.v1 import metering_pb2 as pb


class Earning(IntEnum):
    """The column ``metering.usage.earning``; the values of the proto's EarningState."""

    NONE = pb.EARNING_STATE_UNSPECIFIED
    HELD = pb.EARNING_STATE_HELD
    RELEASED = pb.EARNING_STATE_RELEASED
    VOIDED = pb.EARNING_STATE_VOIDED
    POSTED = pb.EARNING_STATE_POSTED


ALLOWED: dict[Earning, frozenset[Earning]] = {
    Earning.NONE: frozenset({Earning.NONE, Earning.HELD, Earning.POSTED}),
    Earning.HELD: frozenset({Earning.RELEASED, Earning.VOIDED}),
    Earning.RELEASED: frozenset(),
    Earning.VOIDED: frozenset(),
    Earning.POSTED: frozenset(),
}
FINAL = frozenset(s for s, nxt in ALLOWED.items() if not nxt)
HOLD_S_MAX = 31 * 86_400  # a release window of at most 31 days


class IllegalTransition(AssertionError):
    """An earning change the machine does not allow: a bug, never user input."""


def check(src: Earning, dst: Earning) -> None:
    if dst not in ALLOWED[src]:
        raise IllegalTransition(f"earning {src.name} → {dst.name} is not allowed")


def at_settlement(provider_micros: int, hold_s: int) -> Earning:
    """The earning a record gets when it is SETTLED with ``provider_micros``
    for the provider under a release window of ``hold_s`` seconds."""
    if provider_micros <= 0:
        return Earning.NONE
    return Earning.HELD if hold_s > 0 else Earning.POSTED


_S = lpb.OperationStatus
_DONE = (_S.OPERATION_STATUS_OK, _S.OPERATION_STATUS_ALREADY_APPLIED)


def proven_by_ledger(res: lpb.OperationResponse, wanted: Earning) -> Earning | None:
    """The final state the ledger's answer to a release or void (of a job's
    earning or of an aggregate) proves, or None (leave it HELD)."""
    if res.status in _DONE:
        return wanted
    if res.status == _S.OPERATION_STATUS_HOLD_ALREADY_RESOLVED and res.results:
        posted = res.results[0] == lpb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_ALREADY_POSTED
        return Earning.RELEASED if posted else Earning.VOIDED
    return None
