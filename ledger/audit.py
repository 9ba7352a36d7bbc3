"""``idlegrid ledger verify``: proves from the rows alone that history was not
rewritten and that the stored state follows from it.

Checks, each reported precisely:
1. the hash chain: every batch's hash recomputed from its transfers, linked to
   the previous one, seq gap-free, the chain head at the last batch;
2. every account's four balances recomputed from the transfers;
3. per ledger, sum of debits = sum of credits (pending and posted), also in
   the totals table;
4. balance flags hold; every transfer names existing accounts;
5. the open holds are exactly the unresolved pending transfers, and escrow's
   pending credits equal the sum of its open holds; held earnings: escrow's
   posted balance is exactly what it holds for providers, every released
   one posted in full, every voided one refunded exactly once to the partner
   who paid (idlegrid.ledger.audit_earnings); leases, clearing windows and
   node aggregates balance, and every voided aggregate is refunded exactly
   (idlegrid.ledger.audit_leases); and each lease charge, aggregate and
   window fee is proved against metering's usage records (their Merkle roots
   and amounts), in the same snapshot (idlegrid.ledger.audit_clearing);
6. given the checkpoint log (``anchors``, read with a public key the database
   never holds), the recomputed chain passes through every signed checkpoint
   and no old tail is uncovered (idlegrid.ledger.checkpoint_audit). Without
   it, someone holding the database credential could rewrite rows and
   recompute the chain, and checks 1-5 would still pass.

The rules here read the books through ``idlegrid.ledger.store.books`` (one
consistent snapshot) and hold no SQL.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from idlegrid.ledger.audit_clearing import ClearingAudit
from idlegrid.ledger.audit_earnings import EarningsAudit
from idlegrid.ledger.audit_leases import LeaseAudit
from idlegrid.ledger.chain import GENESIS, batch_hash, micros, transfer_bytes
from idlegrid.ledger.checkpoint_audit import Anchors, check
from idlegrid.ledger.codes import (
    CREDITS_MUST_NOT_EXCEED_DEBITS,
    DEBITS_MUST_NOT_EXCEED_CREDITS,
    PENDING,
    POST,
    VOID,
)
from idlegrid.ledger.ids import ESCROW
from idlegrid.ledger.store import books
from idlegrid.ledger.values import Account, BatchRecord, ChainHead, StoredTransfer

PROBLEMS_MAX = 1000


@dataclass
class Report:
    batches: int = 0
    transfers: int = 0
    accounts: int = 0
    checkpoints: int | None = None  # checkpoints verified; None: not checked
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, msg: str) -> None:
        if len(self.problems) < PROBLEMS_MAX:
            self.problems.append(msg)


async def verify(conn: asyncpg.Connection, *, anchors: Anchors | None = None,
                 now: datetime | None = None, clearing: bool = True) -> Report:
    """Audits the books on ``conn`` at one instant, and against the signed
    checkpoints in ``anchors`` when given (``now``: the verifier's clock, for
    the age of an uncovered tail); the report lists every problem found.
    ``clearing``: also prove the clearing transfers against metering's
    usage records (False: the ledger's own books only, e.g. without metering)."""
    marks = {cp.batch for cp in anchors.valid} if anchors is not None else set()
    async with books.snapshot(conn) as book:
        batches = await book.batches()
        audit = _Audit(batches, marks)
        async for t in book.transfers():
            audit.transfer(t)
        audit.end_of_history(await book.chain_head())
        audit.accounts(await book.accounts())
        audit.totals(await book.totals())
        audit.open_holds(await book.open_holds())
        if clearing:
            await audit.clearing.end(conn)  # batched clearing: each aggregate against its usage records
    if anchors is not None:
        audit.report.checkpoints = len(anchors.valid)
        check(audit.report.add, anchors, audit.recomputed, batches, audit.last_batch, now or datetime.now(UTC))
    return audit.report


class _Audit:
    """Replays the transfers in seq order, then checks the stored state against the replay."""

    def __init__(self, batches: dict[int, BatchRecord], marks: set[int]) -> None:
        self.report = Report(batches=len(batches))
        self._batches = batches
        self._marks = marks  # checkpointed batches: their recomputed hashes are kept
        self.recomputed: dict[int, tuple[bytes, int]] = {}
        self._balances: dict[bytes, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        self._pendings: dict[bytes, tuple[bytes, bytes, int]] = {}  # id -> (dr, cr, amount)
        self._resolved: set[bytes] = set()
        self._ledger_totals: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        self._known: set[bytes] = set()
        self._prev_hash, self._expected_seq, self._expected_batch = GENESIS, 1, 1
        self._batch: int | None = None
        self._batch_rows: list[bytes] = []
        self._earnings = EarningsAudit(self.report.add)
        self._leases = LeaseAudit(self.report.add, self._earnings.is_job)
        self.clearing = ClearingAudit(self.report.add)

    # -- 1. the hash chain, and 2. the balances replayed ---------------------

    def transfer(self, t: StoredTransfer) -> None:
        rep = self.report
        rep.transfers += 1
        seq = t.seq
        if seq != self._expected_seq:
            rep.add(f"seq {seq}: expected {self._expected_seq} (a transfer is missing)")
        self._expected_seq = seq + 1
        if t.batch != self._batch:
            self._close_batch()
            self._batch, self._batch_rows = t.batch, []
        if not self._leases.transfer(t):
            self._earnings.transfer(t)
        self.clearing.transfer(t)
        self._batch_rows.append(transfer_bytes(seq, t.id, t.debit_account_id, t.credit_account_id, t.amount,
                                               t.pending_id, t.user_data, t.timeout_s, t.ledger, t.code, t.flags))
        d, c = self._balances[t.debit_account_id], self._balances[t.credit_account_id]
        amount, flags, pid = t.amount, t.flags, t.pending_id
        if flags & PENDING:
            d[0] += amount
            c[2] += amount
            self._pendings[t.id] = (t.debit_account_id, t.credit_account_id, amount)
        elif flags & (POST | VOID):
            p = self._pendings.get(pid)
            if p is None:
                rep.add(f"seq {seq}: resolves an unknown pending transfer {pid.hex()}")
                return
            if pid in self._resolved:
                rep.add(f"seq {seq}: pending transfer {pid.hex()} resolved twice")
            self._resolved.add(pid)
            if (t.debit_account_id, t.credit_account_id) != p[:2]:
                rep.add(f"seq {seq}: accounts differ from its pending transfer")
            d[0] -= p[2]
            c[2] -= p[2]
            if flags & POST:
                if amount > p[2]:
                    rep.add(f"seq {seq}: posts more than its pending amount")
                d[1] += amount
                c[3] += amount
        else:
            d[1] += amount
            c[3] += amount
        if t.balances != (*d, *c):
            rep.add(f"seq {seq}: stored balance history differs from the recomputed balances")

    def _close_batch(self) -> None:
        n = self._batch
        if n is None:
            return
        b = self._batches.get(n)
        if b is None:
            self.report.add(f"batch {n}: transfers point at a batch that has no row")
            return
        if n != self._expected_batch:
            self.report.add(f"batch {n}: expected batch {self._expected_batch} next in the chain")
        if b.prev_hash != self._prev_hash:
            self.report.add(f"batch {n}: prev_hash does not link to batch {n - 1}")
        h = batch_hash(b.prev_hash, n, b.first_seq, b.last_seq, micros(b.committed_at), self._batch_rows)
        if h != b.hash:
            self.report.add(f"batch {n} (seq {b.first_seq}..{b.last_seq}): hash mismatch: "
                            "its transfers were changed after commit")
        if n in self._marks:
            self.recomputed[n] = (h, b.last_seq)
        self._prev_hash, self._expected_batch = b.hash, n + 1

    @property
    def last_batch(self) -> int:
        return self._expected_batch - 1

    def end_of_history(self, head: ChainHead) -> None:
        self._close_batch()
        last_batch, last_seq = self._expected_batch - 1, self._expected_seq - 1
        if head.batch != last_batch or head.last_seq != last_seq or head.hash != self._prev_hash:
            self.report.add(f"chain head (batch {head.batch}, seq {head.last_seq}) does not match the "
                            f"last batch ({last_batch}, seq {last_seq})")
        if len(self._batches) != last_batch:
            self.report.add(f"{len(self._batches)} batch rows but {last_batch} batches hold transfers")

    # -- 2.-4. the stored state against the replay --------------------------

    def accounts(self, accounts: list[Account]) -> None:
        rep = self.report
        rep.accounts = len(accounts)
        for a in accounts:
            self._known.add(a.id)
            name = uuid.UUID(bytes=a.id)
            stored = [a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted]
            computed = self._balances.get(a.id, [0, 0, 0, 0])
            if stored != computed:
                rep.add(f"account {name}: stored balances {stored} != recomputed {computed}")
            t = self._ledger_totals[a.ledger]
            for i in range(4):
                t[i] += stored[i]
            if a.flags & DEBITS_MUST_NOT_EXCEED_CREDITS and stored[0] + stored[1] > stored[3]:
                rep.add(f"account {name}: debits exceed credits")
            if a.flags & CREDITS_MUST_NOT_EXCEED_DEBITS and stored[2] + stored[3] > stored[1]:
                rep.add(f"account {name}: credits exceed debits")
        for aid in self._balances.keys() - self._known:
            rep.add(f"transfers move money for unknown account {aid.hex()}")
        for ledger_, (dp, dpo, cp, cpo) in sorted(self._ledger_totals.items()):
            if dp != cp or dpo != cpo:
                rep.add(f"ledger {ledger_}: debits {dp}/{dpo} != credits {cp}/{cpo} (pending/posted)")

    def totals(self, table: dict[int, list[int]]) -> None:
        for ledger_, row in table.items():
            if row != self._ledger_totals.get(ledger_, [0, 0, 0, 0]):
                self.report.add(f"ledger {ledger_}: totals table differs from the accounts")

    # -- 5. holds and escrow -------------------------------------------------

    def open_holds(self, open_holds: set[bytes]) -> None:
        unresolved = self._pendings.keys() - self._resolved
        if open_holds != unresolved:
            self.report.add(f"open holds ({len(open_holds)}) differ from unresolved pending transfers "
                            f"({len(unresolved)})")
        escrow = ESCROW
        if escrow in self._known:
            eb = self._balances.get(escrow, [0, 0, 0, 0])
            held = sum(p[2] for pid, p in self._pendings.items() if pid in unresolved and p[1] == escrow)
            if eb[2] != held:
                self.report.add(f"escrow:jobs pending credits {eb[2]} != open holds {held}")

            def pending_debits(account: bytes) -> int:
                return sum(p[2] for pid, p in self._pendings.items() if pid in unresolved and p[0] == account)

            self._earnings.end(eb, pending_debits)
        self._leases.end()
