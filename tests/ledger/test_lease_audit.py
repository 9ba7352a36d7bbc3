"""The books of leases and clearing (idlegrid.ledger.audit_leases), fed
hand-made histories: the honest one passes; an unbalanced window, a partial
release, a voided aggregate refunded short, twice or not at all, a refund of
an aggregate that was not voided, and a lease that is no consumer hold are
each reported."""

from __future__ import annotations

import os

import pytest

from idlegrid.ledger.aggregates import ESCROW, aggregate_refund_id
from idlegrid.ledger.audit_leases import LeaseAudit
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
from idlegrid.ledger.leases import lease_clear_id
from idlegrid.ledger.values import StoredTransfer

CONSUMER, OTHER, PROVIDER, REVENUE = (os.urandom(16) for _ in range(4))
LEASE_ID, AGG, WINDOW = os.urandom(16), os.urandom(16), os.urandom(16)
_seq = iter(range(1, 10**6))


def _t(tid, dr, cr, amount, *, code, flags=0, pending_id=b"", user_data=b"", timeout_s=0) -> StoredTransfer:
    return StoredTransfer(id=tid, debit_account_id=dr, credit_account_id=cr, amount=amount, pending_id=pending_id,
                          user_data=user_data or os.urandom(16), timeout_s=timeout_s, ledger=1, code=code,
                          flags=flags, seq=next(_seq))


HOLD = _t(LEASE_ID, CONSUMER, ESCROW, 100, code=CODE_LEASE, flags=PENDING)
WINDOW_CHAIN = [
    _t(lease_clear_id(LEASE_ID), CONSUMER, ESCROW, 60, code=CODE_LEASE, flags=POST | LINKED, pending_id=LEASE_ID),
    _t(AGG, ESCROW, PROVIDER, 54, code=CODE_EARNING, flags=PENDING | LINKED),
    _t(WINDOW, ESCROW, REVENUE, 6, code=CODE_FEE),
]
VOIDED = _t(os.urandom(16), ESCROW, PROVIDER, 54, code=CODE_EARNING, flags=VOID | LINKED, pending_id=AGG)


def _refund(to: bytes, amount: int, flags: int = 0) -> StoredTransfer:
    return _t(aggregate_refund_id(AGG, to), ESCROW, to, amount, code=CODE_REFUND, flags=flags, user_data=AGG)


def _audit(history: list[StoredTransfer]) -> list[str]:
    problems: list[str] = []
    a = LeaseAudit(problems.append, lambda user_data: False)
    for t in history:
        a.transfer(t)
    a.end()
    return problems


def test_an_honest_window_and_an_exact_void_pass():
    assert _audit([HOLD, *WINDOW_CHAIN]) == []
    assert _audit([HOLD, *WINDOW_CHAIN, VOIDED, _refund(CONSUMER, 40, LINKED), _refund(OTHER, 14)]) == []
    release = _t(os.urandom(16), ESCROW, PROVIDER, 54, code=CODE_EARNING, flags=POST, pending_id=AGG)
    assert _audit([HOLD, *WINDOW_CHAIN, release]) == []


@pytest.mark.parametrize("history, what", [
    ([HOLD, WINDOW_CHAIN[0], WINDOW_CHAIN[1], _t(WINDOW, ESCROW, REVENUE, 5, code=CODE_FEE)], "pays less"),
    ([HOLD, *WINDOW_CHAIN, _t(os.urandom(16), ESCROW, PROVIDER, 50, code=CODE_EARNING, flags=POST, pending_id=AGG)],
     "partial release"),
    ([HOLD, *WINDOW_CHAIN, VOIDED, _refund(CONSUMER, 53)], "refunded short"),
    ([HOLD, *WINDOW_CHAIN, VOIDED], "not refunded"),
    ([HOLD, *WINDOW_CHAIN, VOIDED, _refund(CONSUMER, 27, LINKED), _refund(CONSUMER, 27)], "one consumer twice"),
    ([HOLD, *WINDOW_CHAIN, _refund(CONSUMER, 54)], "refund without a void"),
    ([_t(LEASE_ID, CONSUMER, ESCROW, 100, code=CODE_LEASE, flags=PENDING, timeout_s=60), *WINDOW_CHAIN],
     "lease with a timeout"),
    ([_t(LEASE_ID, CONSUMER, OTHER, 100, code=CODE_LEASE, flags=PENDING)], "lease not into escrow"),
])
def test_every_way_of_unbalancing_clearing_is_reported(history, what):
    assert _audit(history), what
