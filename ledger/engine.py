"""The rules of the ledger, with no I/O: applies the transfers of one
group-committed batch to the account state loaded (and locked) for it, and
returns one result per transfer plus exactly what must be written.

Semantics follow TigerBeetle: client-chosen ids are idempotency keys (same
fields -> EXISTS, different -> EXISTS_WITH_DIFFERENT_FIELDS), business
rejections burn the id, pending/post/void with timeouts, linked chains that
succeed or fail together. One deliberate difference: inside a linked chain an
EXISTS result does not break the chain, so retrying a whole chain answers
EXISTS for every item instead of failing it. A request may ask for whole
chains (the marketplace's ClearWindow and VoidAggregates): each chain is then
all new or all already there; a chain mixing the two is rolled back (its new
items answer LINKED_EVENT_FAILED) and no id of such a request is burned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from idlegrid.common.money import AMOUNT_MAX
from idlegrid.ledger.codes import (
    BURNING,
    CREDITS_MUST_NOT_EXCEED_DEBITS,
    DEBITS_MUST_NOT_EXCEED_CREDITS,
    EXPIRED,
    LINKED,
    PENDING,
    POST,
    VOID,
    R,
)
from idlegrid.ledger.validation import check_fields, same_fields
from idlegrid.ledger.values import AccountState, Hold, HoldState, StoredTransfer, Transfer


class InvariantViolation(AssertionError):
    """A ledger invariant broke: the batch must not commit."""


def hold_states(pending_ids, resolved: dict[bytes, int], open_until: dict[bytes, int | None]
                ) -> dict[bytes, Hold]:
    """The state of each pending transfer a batch refers to, from what the
    store read: ``resolved`` maps a pending id to the flags of the transfer
    that resolved it; ``open_until`` maps an open hold to its expiry (µs since
    the epoch, None without a timeout). A pending id in neither is unknown."""
    holds: dict[bytes, Hold] = {}
    for p in pending_ids:
        flags = resolved.get(p)
        if flags is not None:
            state = HoldState.POSTED if flags & POST else (
                HoldState.EXPIRED if flags & EXPIRED else HoldState.VOIDED)
            holds[p] = Hold(state, None, in_db=False)
        elif p in open_until:
            holds[p] = Hold(HoldState.OPEN, open_until[p], in_db=True)
    return holds


@dataclass(slots=True)
class Batch:
    """One group-committed batch. Load the state, call ``apply`` for each
    request's transfers in order, then write what the fields describe."""

    now_us: int
    accounts: dict[bytes, AccountState]
    stored: dict[bytes, StoredTransfer]  # existing transfers by id (batch ids and pendings)
    failed: dict[bytes, int]  # burned ids
    holds: dict[bytes, Hold]  # by pending id, for the pendings referenced
    first_seq: int
    created: list[StoredTransfer] = field(default_factory=list)
    burned: dict[bytes, int] = field(default_factory=dict)
    _undo: list = field(default_factory=list)
    _notes: dict | None = None  # the current request's balancing debits: id -> (amount, available, pending)
    _burn: bool = True  # whether a business rejection burns its id (not in whole-chain requests)

    def apply(self, transfers: list[Transfer], *, internal: bool = False, whole_chains: bool = False,
              notes: dict | None = None) -> list[int]:
        """Applies one request's transfers in order; returns one result per
        item. A linked chain never spans two requests. ``whole_chains``: each
        chain must be all new or all existing (see the module's doc);
        ``notes`` receives, per balancing debit, (amount moved or found,
        the debit account's available credits and pending debits before it)."""
        self._notes, self._burn = notes, not whole_chains
        results: list[int] = []
        chain_start: int | None = None
        chain_mark = (0, 0)
        chain_failed = False
        last = len(transfers) - 1
        for i, t in enumerate(transfers):
            linked = bool(t.flags & LINKED)
            if chain_start is None and linked:
                chain_start, chain_mark, chain_failed = i, (len(self.created), len(self._undo)), False
            if chain_failed:
                results.append(R.LINKED_EVENT_FAILED)
            else:
                r = check_fields(t, internal)
                if r == R.OK:
                    r = self._apply_one(t, internal)
                if linked and i == last and r in (R.OK, R.EXISTS):
                    r = R.LINKED_EVENT_CHAIN_OPEN
                results.append(r)
                if chain_start is not None and r not in (R.OK, R.EXISTS):
                    self._rollback(chain_mark)
                    for j in range(chain_start, i):
                        results[j] = R.LINKED_EVENT_FAILED
                    chain_failed = True
            if not linked:
                if whole_chains and chain_start is not None and not chain_failed:
                    self._whole(results, chain_start, i, chain_mark)
                chain_start, chain_failed = None, False
        self._undo.clear()
        return results

    def _whole(self, results: list[int], start: int, end: int, mark: tuple[int, int]) -> None:
        """A chain that is partly new and partly there already is rolled back."""
        chain = results[start:end + 1]
        if R.OK in chain and R.EXISTS in chain:
            self._rollback(mark)
            for j in range(start, end + 1):
                if results[j] == R.OK:
                    results[j] = R.LINKED_EVENT_FAILED

    # -- one transfer ------------------------------------------------------

    def _apply_one(self, t: Transfer, internal: bool) -> int:
        tid = t.id
        existing = self.stored.get(tid)
        if existing is not None:
            same = same_fields(t, existing)
            if t.amount_min:
                self._note(t, existing.amount if same else 0)
            return R.EXISTS if same else R.EXISTS_WITH_DIFFERENT_FIELDS
        if tid in self.failed or tid in self.burned:
            return R.ID_ALREADY_FAILED
        flags = t.flags
        if flags & (POST | VOID):
            r = self._resolve(t, internal)
        else:
            r = self._move(t)
        if r in BURNING and self._burn and not t.amount_min:
            self.burned[tid] = r
        return r

    def _note(self, t: Transfer, amount: int) -> None:
        """Tells a balancing debit's caller what it moved (or found) and what
        the debit account had available and pending before it."""
        dr = self.accounts.get(t.debit_account_id)
        if self._notes is not None and dr is not None:
            self._notes[t.id] = (amount, max(dr.cpo - dr.dpo - dr.dp, 0), dr.dp)

    def _move(self, t: Transfer) -> int:
        dr = self.accounts.get(t.debit_account_id)
        if dr is None:
            return R.DEBIT_ACCOUNT_NOT_FOUND
        cr = self.accounts.get(t.credit_account_id)
        if cr is None:
            return R.CREDIT_ACCOUNT_NOT_FOUND
        if dr.ledger != cr.ledger:
            return R.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
        if t.ledger != dr.ledger:
            return R.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
        amount = t.amount
        if t.amount_min:  # a balancing debit: what is available, within its bounds
            amount = min(amount, max(dr.cpo - dr.dpo - dr.dp, 0))
            self._note(t, amount if amount >= t.amount_min else 0)
            if amount < t.amount_min:
                return R.EXCEEDS_CREDITS
        pending = bool(t.flags & PENDING)
        if (dr.dp if pending else dr.dpo) + amount > AMOUNT_MAX or dr.dp + dr.dpo + amount > AMOUNT_MAX:
            return R.OVERFLOWS_DEBITS
        if (cr.cp if pending else cr.cpo) + amount > AMOUNT_MAX or cr.cp + cr.cpo + amount > AMOUNT_MAX:
            return R.OVERFLOWS_CREDITS
        if dr.flags & DEBITS_MUST_NOT_EXCEED_CREDITS and dr.dp + dr.dpo + amount > dr.cpo:
            return R.EXCEEDS_CREDITS
        if cr.flags & CREDITS_MUST_NOT_EXCEED_DEBITS and cr.cp + cr.cpo + amount > cr.dpo:
            return R.EXCEEDS_DEBITS
        self._save(dr)
        self._save(cr)
        expires_us = None
        if pending:
            dr.dp += amount
            cr.cp += amount
            if t.timeout_s:
                expires_us = self.now_us + t.timeout_s * 1_000_000
            self._set_hold(t.id, Hold(HoldState.OPEN, expires_us, in_db=False))
        else:
            dr.dpo += amount
            cr.cpo += amount
        self._create(t, t.debit_account_id, t.credit_account_id, amount, t.ledger, t.code, dr, cr, expires_us)
        return R.OK

    def _resolve(self, t: Transfer, internal: bool) -> int:
        p = self.stored.get(t.pending_id)
        if p is None:
            return R.PENDING_TRANSFER_NOT_FOUND
        if not p.flags & PENDING:
            return R.PENDING_TRANSFER_NOT_PENDING
        if t.debit_account_id and t.debit_account_id != p.debit_account_id:
            return R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id and t.credit_account_id != p.credit_account_id:
            return R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
        if t.ledger and t.ledger != p.ledger:
            return R.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
        if t.code and t.code != p.code:
            return R.PENDING_TRANSFER_HAS_DIFFERENT_CODE
        hold = self.holds.get(t.pending_id)
        if hold is None:  # loaded state is inconsistent: never guess
            raise InvariantViolation(f"pending transfer {t.pending_id.hex()} has no hold state")
        if hold.state is HoldState.POSTED:
            return R.PENDING_TRANSFER_ALREADY_POSTED
        if hold.state is HoldState.VOIDED:
            return R.PENDING_TRANSFER_ALREADY_VOIDED
        if hold.state is HoldState.EXPIRED:
            return R.PENDING_TRANSFER_EXPIRED
        expired = hold.expires_us is not None and hold.expires_us <= self.now_us
        if expired and not internal:
            return R.PENDING_TRANSFER_EXPIRED
        is_post = bool(t.flags & POST)
        if is_post and t.amount > p.amount:
            return R.EXCEEDS_PENDING_TRANSFER_AMOUNT
        if not is_post and t.amount not in (0, p.amount):
            return R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        dr = self.accounts[p.debit_account_id]
        cr = self.accounts[p.credit_account_id]
        amount = t.amount if is_post else p.amount
        self._save(dr)
        self._save(cr)
        dr.dp -= p.amount
        cr.cp -= p.amount
        if is_post:
            dr.dpo += amount
            cr.cpo += amount
        if dr.dp < 0 or cr.cp < 0:
            raise InvariantViolation(f"pending balance below zero resolving {t.pending_id.hex()}")
        new_state = HoldState.POSTED if is_post else (
            HoldState.EXPIRED if t.flags & EXPIRED else HoldState.VOIDED)
        self._set_hold(t.pending_id, Hold(new_state, hold.expires_us, hold.in_db))
        self._create(t, p.debit_account_id, p.credit_account_id, amount, p.ledger, p.code, dr, cr, None)
        return R.OK

    # -- state changes, undoable within a linked chain ----------------------

    def _save(self, acct: AccountState) -> None:
        self._undo.append((acct, acct.dp, acct.dpo, acct.cp, acct.cpo, acct.dirty))
        acct.dirty = True

    def _set_hold(self, pending_id: bytes, hold: Hold) -> None:
        self._undo.append((pending_id, self.holds.get(pending_id)))
        self.holds[pending_id] = hold

    def _create(self, t: Transfer, dr_id: bytes, cr_id: bytes, amount: int, ledger: int, code: int,
                dr: AccountState, cr: AccountState, expires_us: int | None) -> None:
        s = StoredTransfer(
            id=t.id, debit_account_id=dr_id, credit_account_id=cr_id, amount=amount,
            pending_id=t.pending_id, user_data=t.user_data, timeout_s=t.timeout_s,
            ledger=ledger, code=code, flags=t.flags, seq=self.first_seq + len(self.created),
            balances=(dr.dp, dr.dpo, dr.cp, dr.cpo, cr.dp, cr.dpo, cr.cp, cr.cpo),
            expires_us=expires_us,
        )
        self.created.append(s)
        self.stored[t.id] = s
        self._undo.append((t.id,))

    def _rollback(self, mark: tuple[int, int]) -> None:
        created_len, undo_len = mark
        while len(self._undo) > undo_len:
            entry = self._undo.pop()
            if len(entry) == 6:
                acct, acct.dp, acct.dpo, acct.cp, acct.cpo, acct.dirty = entry
            elif len(entry) == 2:
                pid, old = entry
                if old is None:
                    self.holds.pop(pid, None)
                else:
                    self.holds[pid] = old
            else:
                self.stored.pop(entry[0], None)
        del self.created[created_len:]

    # -- what to write -----------------------------------------------------

    def dirty_accounts(self) -> list[tuple[bytes, AccountState]]:
        return [(k, a) for k, a in self.accounts.items() if a.dirty]

    def hold_changes(self) -> tuple[list[tuple[bytes, int | None]], list[bytes]]:
        """(holds to insert, holds to delete) in the open_holds working set."""
        opened, closed = [], []
        for pid, h in self.holds.items():
            if h.state is HoldState.OPEN and not h.in_db:
                opened.append((pid, h.expires_us))
            elif h.state is not HoldState.OPEN and h.in_db:
                closed.append(pid)
        return opened, closed

    def totals_delta(self) -> dict[int, list[int]]:
        """Per ledger: [debits_pending, debits_posted, credits_pending, credits_posted]
        moved by this batch. Raises if debits and credits differ."""
        totals: dict[int, list[int]] = {}
        for s in self.created:
            d = totals.setdefault(s.ledger, [0, 0, 0, 0])
            if s.flags & PENDING:
                d[0] += s.amount
                d[2] += s.amount
            elif s.flags & (POST | VOID):
                p = self.stored[s.pending_id]
                d[0] -= p.amount
                d[2] -= p.amount
                if s.flags & POST:
                    d[1] += s.amount
                    d[3] += s.amount
            else:
                d[1] += s.amount
                d[3] += s.amount
        for ledger, (dp, dpo, cp, cpo) in totals.items():
            if dp != cp or dpo != cpo:
                raise InvariantViolation(f"ledger {ledger}: debits and credits differ in a batch")
        return totals
