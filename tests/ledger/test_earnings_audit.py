"""The books of held earnings (idlegrid.ledger.audit_earnings), fed
hand-made histories: the honest one passes; a refund to someone else, of
another amount, twice, or without a void, a partial release and escrow
keeping money it does not hold for a provider are each reported."""

from __future__ import annotations

import os

import pytest

from idlegrid.ledger.audit_earnings import ESCROW, EarningsAudit
from idlegrid.ledger.codes import CODE_EARNING, CODE_REFUND, CODE_RESERVE, PENDING, POST, VOID
from idlegrid.ledger.values import StoredTransfer

CONSUMER, PROVIDER, OTHER = os.urandom(16), os.urandom(16), os.urandom(16)
JOB = os.urandom(16)


def _t(dr, cr, amount, *, code, flags=0, pending_id=b"", tid=None) -> StoredTransfer:
    return StoredTransfer(id=tid or os.urandom(16), debit_account_id=dr, credit_account_id=cr, amount=amount,
                          pending_id=pending_id, user_data=JOB, timeout_s=0, ledger=1, code=code, flags=flags)


RESERVE = _t(CONSUMER, ESCROW, 1000, code=CODE_RESERVE, flags=PENDING)
POST_RESERVE = _t(CONSUMER, ESCROW, 500, code=CODE_RESERVE, flags=POST, pending_id=RESERVE.id)
HELD = _t(ESCROW, PROVIDER, 450, code=CODE_EARNING, flags=PENDING)
VOIDED = _t(ESCROW, PROVIDER, 450, code=CODE_EARNING, flags=VOID, pending_id=HELD.id)


def _audit(history: list[StoredTransfer], escrow: list[int]) -> list[str]:
    problems: list[str] = []
    a = EarningsAudit(problems.append)
    for t in history:
        a.transfer(t)
    a.end(escrow, lambda acct: escrow[0])
    return problems


def test_an_exact_refund_of_a_voided_earning_passes():
    refund = _t(ESCROW, CONSUMER, 450, code=CODE_REFUND)
    # escrow: credits 500 (the charge), debits 50 (fee) + 450 (refund); nothing held
    assert _audit([RESERVE, POST_RESERVE, HELD, VOIDED, refund], [0, 500, 0, 500]) == []


def test_a_held_earning_is_what_escrow_keeps():
    assert _audit([RESERVE, POST_RESERVE, HELD], [450, 50, 0, 500]) == []
    assert _audit([RESERVE, POST_RESERVE, HELD], [450, 40, 0, 500])  # 10 kept for nobody


@pytest.mark.parametrize("tail, what", [
    ([VOIDED, _t(ESCROW, OTHER, 450, code=CODE_REFUND)], "to another account"),
    ([VOIDED, _t(ESCROW, CONSUMER, 449, code=CODE_REFUND)], "another amount"),
    ([VOIDED, _t(ESCROW, CONSUMER, 450, code=CODE_REFUND), _t(ESCROW, CONSUMER, 450, code=CODE_REFUND)], "twice"),
    ([VOIDED], "no refund"),
    ([_t(ESCROW, CONSUMER, 450, code=CODE_REFUND)], "refund without a void"),
    ([_t(ESCROW, PROVIDER, 400, code=CODE_EARNING, flags=POST, pending_id=HELD.id)], "partial release"),
])
def test_every_way_of_losing_or_misdirecting_a_refund_is_reported(tail, what):
    assert _audit([RESERVE, POST_RESERVE, HELD, *tail], [0, 500, 0, 500]), what
