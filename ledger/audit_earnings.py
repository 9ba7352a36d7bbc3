"""The books of held earnings, for ``idlegrid ledger verify`` (see
idlegrid.ledger.earnings): fed every transfer in seq order, then checks

- escrow:jobs holds exactly the held earnings: its posted balance (credits -
  debits) equals its pending debits, which equal the open pending transfers
  it is debited by;
- a held earning that ended was posted in full, or voided with exactly one
  refund of the same amount, for the same job, from escrow:jobs to the
  consumer whose reservation paid for the job; and every refund is such a
  refund.

So every micro-credit a partner paid is, to the micro-credit, a provider's
earning (posted or held), a platform fee, or back with the partner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from idlegrid.ledger.codes import (
    CODE_EARNING,
    CODE_REFUND,
    CODE_RESERVE,
    PENDING,
    POST,
    VOID,
)
from idlegrid.ledger.ids import ESCROW
from idlegrid.ledger.values import StoredTransfer


@dataclass
class EarningsAudit:
    report: Callable[[str], None]
    _payer: dict[bytes, bytes] = field(default_factory=dict)  # job -> consumer (its reservation's debit)
    _held: dict[bytes, StoredTransfer] = field(default_factory=dict)  # pending earning id -> it
    _voided: dict[bytes, StoredTransfer] = field(default_factory=dict)  # job -> its voided held earning
    _refunds: dict[bytes, list[StoredTransfer]] = field(default_factory=dict)  # job -> refunds

    def is_job(self, user_data: bytes) -> bool:
        """Whether ``user_data`` names a job reserved so far (its transfers are per-job ones)."""
        return user_data in self._payer

    def transfer(self, t: StoredTransfer) -> None:
        if t.debit_account_id != ESCROW and t.credit_account_id != ESCROW:
            return
        if t.flags & PENDING:
            if t.code == CODE_RESERVE and t.credit_account_id == ESCROW:
                self._payer[t.user_data] = t.debit_account_id
            elif t.code == CODE_EARNING and t.debit_account_id == ESCROW:
                self._held[t.id] = t
        elif t.flags & (POST | VOID):
            held = self._held.get(t.pending_id)
            if held is None:
                return
            if t.flags & POST and t.amount != held.amount:
                self.report(f"seq {t.seq}: a held earning of job {held.user_data.hex()} released for "
                            f"{t.amount} of {held.amount}")
            elif t.flags & VOID:
                self._voided[held.user_data] = held
        elif t.code == CODE_REFUND and t.debit_account_id == ESCROW:
            self._refunds.setdefault(t.user_data, []).append(t)

    def end(self, escrow_balances: list[int], pending_debits: Callable[[bytes], int]) -> None:
        """``escrow_balances``: escrow:jobs' four recomputed balances;
        ``pending_debits(account)``: the open pending transfers it is debited by."""
        for job, held in self._voided.items():
            refunds = self._refunds.get(job, [])
            payer = self._payer.get(job)
            if len(refunds) != 1:
                self.report(f"job {job.hex()}: voided held earning has {len(refunds)} refunds, expected 1")
            elif refunds[0].amount != held.amount or refunds[0].credit_account_id != payer:
                self.report(f"job {job.hex()}: refund of {refunds[0].amount} to another account than the "
                            f"payer, or not the voided {held.amount}")
        for job, refunds in self._refunds.items():
            if job not in self._voided:
                self.report(f"job {job.hex()}: {len(refunds)} refund(s) without a voided held earning")
        dp, dpo, _cp, cpo = escrow_balances
        if cpo - dpo != dp:
            self.report(f"escrow:jobs posted balance is {cpo - dpo}, expected its held earnings {dp}")
        if dp != pending_debits(ESCROW):
            self.report(f"escrow:jobs pending debits {dp} != its open pending transfers "
                        f"{pending_debits(ESCROW)}")
