"""A small in-memory model of the ledger's semantics, the oracle of the
stateful test: accounts with balance flags, transfers with client ids as
idempotency keys, burned ids, pending / post / void, expiry and linked chains.

It is written from the rules as documented (ledger.proto, the engine's module
docstring, TigerBeetle's documentation), not from the engine's code, and kept
deliberately plain: a linked chain snapshots the whole state and restores it on
failure. Only the validations the stateful test
generates are modelled (the bad-input tests cover the rest).

Semantics modelled:
- validation first (nothing else is looked at for a malformed transfer);
- an id already stored answers EXISTS when the fields are the same (post and
  void may leave out what the pending transfer fixes), else
  EXISTS_WITH_DIFFERENT_FIELDS; a burned id answers ID_ALREADY_FAILED;
- EXCEEDS_CREDITS, EXCEEDS_DEBITS and PENDING_TRANSFER_EXPIRED burn the id,
  also inside a chain that is rolled back; other refusals do not;
- a chain (items linked to the next) applies whole or not at all; its failing
  item keeps its own result and the others answer LINKED_EVENT_FAILED; an
  EXISTS does not break a chain; a chain still open at the end of the request
  answers LINKED_EVENT_CHAIN_OPEN on its last item;
- a hold resolves at most once: posted (up to its amount, the rest released),
  voided (amount 0 or its amount), or expired (voided by the sweep); a hold
  whose timeout passed answers PENDING_TRANSFER_EXPIRED even before the sweep.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from idlegrid.ledger.v1 import ledger_pb2 as pb

LINKED = pb.TRANSFER_FLAG_LINKED
PENDING = pb.TRANSFER_FLAG_PENDING
POST = pb.TRANSFER_FLAG_POST_PENDING_TRANSFER
VOID = pb.TRANSFER_FLAG_VOID_PENDING_TRANSFER
DMNEC = pb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
CMNED = pb.ACCOUNT_FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS


class C:
    """CreateTransferResult values."""

    OK = pb.CREATE_TRANSFER_RESULT_OK
    EXISTS = pb.CREATE_TRANSFER_RESULT_EXISTS
    LINKED_EVENT_FAILED = pb.CREATE_TRANSFER_RESULT_LINKED_EVENT_FAILED
    CHAIN_OPEN = pb.CREATE_TRANSFER_RESULT_LINKED_EVENT_CHAIN_OPEN
    ACCOUNTS_MUST_BE_DIFFERENT = pb.CREATE_TRANSFER_RESULT_ACCOUNTS_MUST_BE_DIFFERENT
    AMOUNT_MUST_NOT_BE_ZERO = pb.CREATE_TRANSFER_RESULT_AMOUNT_MUST_NOT_BE_ZERO
    DEBIT_NOT_FOUND = pb.CREATE_TRANSFER_RESULT_DEBIT_ACCOUNT_NOT_FOUND
    CREDIT_NOT_FOUND = pb.CREATE_TRANSFER_RESULT_CREDIT_ACCOUNT_NOT_FOUND
    SAME_LEDGER = pb.CREATE_TRANSFER_RESULT_ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
    LEDGER_AS_ACCOUNTS = pb.CREATE_TRANSFER_RESULT_TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
    PENDING_NOT_FOUND = pb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_NOT_FOUND
    PENDING_NOT_PENDING = pb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_NOT_PENDING
    DIFFERENT_DEBIT = pb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
    DIFFERENT_CREDIT = pb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
    DIFFERENT_LEDGER = pb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
    DIFFERENT_CODE = pb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_HAS_DIFFERENT_CODE
    EXCEEDS_PENDING = pb.CREATE_TRANSFER_RESULT_EXCEEDS_PENDING_TRANSFER_AMOUNT
    DIFFERENT_AMOUNT = pb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
    ALREADY_POSTED = pb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_ALREADY_POSTED
    ALREADY_VOIDED = pb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_ALREADY_VOIDED
    DIFFERENT_FIELDS = pb.CREATE_TRANSFER_RESULT_EXISTS_WITH_DIFFERENT_FIELDS
    EXCEEDS_CREDITS = pb.CREATE_TRANSFER_RESULT_EXCEEDS_CREDITS
    EXCEEDS_DEBITS = pb.CREATE_TRANSFER_RESULT_EXCEEDS_DEBITS
    EXPIRED = pb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_EXPIRED
    ALREADY_FAILED = pb.CREATE_TRANSFER_RESULT_ID_ALREADY_FAILED


BURNING = {C.EXCEEDS_CREDITS, C.EXCEEDS_DEBITS, C.EXPIRED}


@dataclass
class Acct:
    ledger: int
    flags: int
    balances: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # dp, dpo, cp, cpo


@dataclass(frozen=True)
class Stored:
    """A transfer as the ledger keeps it (post/void filled in from the pending)."""

    dr: bytes
    cr: bytes
    amount: int
    pending_id: bytes
    user_data: bytes
    timeout_s: int
    ledger: int
    code: int
    flags: int


@dataclass
class Hold:
    state: str  # "open", "posted", "voided", "expired"
    amount: int
    dr: bytes
    cr: bytes
    timed: bool  # has a short timeout: may expire during the test
    group: int = 0  # creation order of timed holds (all have the same timeout)


@dataclass
class Model:
    accounts: dict[bytes, Acct] = field(default_factory=dict)
    stored: dict[bytes, Stored] = field(default_factory=dict)
    burned: set[bytes] = field(default_factory=set)
    holds: dict[bytes, Hold] = field(default_factory=dict)

    def clone(self) -> Model:
        return Model(
            accounts={k: Acct(a.ledger, a.flags, a.balances[:]) for k, a in self.accounts.items()},
            stored=dict(self.stored), burned=set(self.burned),
            holds={k: copy.copy(h) for k, h in self.holds.items()})

    # -- the expiry sweep --------------------------------------------------

    def expire(self, pid: bytes) -> None:
        """The sweep voids the open hold ``pid``."""
        h = self.holds[pid]
        assert h.state == "open", (pid.hex(), h.state)
        h.state = "expired"
        self.accounts[h.dr].balances[0] -= h.amount
        self.accounts[h.cr].balances[2] -= h.amount

    # -- one request -------------------------------------------------------

    def apply(self, transfers: list[pb.Transfer], *, due: set[bytes], group: int) -> list[int]:
        """Applies one CreateTransfers request; ``due``: the holds whose timeout
        has passed by the ledger's clock (swept or not). Returns the results."""
        results: list[int] = []
        n = len(transfers)
        i = 0
        while i < n:
            j = i
            while j < n - 1 and transfers[j].flags & LINKED:
                j += 1
            chain = transfers[i:j + 1]
            if len(chain) == 1 and not chain[0].flags & LINKED:
                results.append(self._one(chain[0], due, group))
            else:
                results.extend(self._chain(chain, due, group, open_at_end=bool(chain[-1].flags & LINKED)))
            i = j + 1
        return results

    def _chain(self, chain, due, group, *, open_at_end: bool) -> list[int]:
        saved = self.clone()
        out: list[int] = []
        for k, t in enumerate(chain):
            r = self._one(t, due, group)
            if open_at_end and k == len(chain) - 1 and r in (C.OK, C.EXISTS):
                r = C.CHAIN_OPEN
            if r not in (C.OK, C.EXISTS):
                burned = self.burned
                self.accounts, self.stored, self.holds = saved.accounts, saved.stored, saved.holds
                self.burned = burned  # burned ids stay burned
                return [C.LINKED_EVENT_FAILED] * k + [r] + [C.LINKED_EVENT_FAILED] * (len(chain) - k - 1)
            out.append(r)
        return out

    def _one(self, t: pb.Transfer, due: set[bytes], group: int) -> int:
        r = _validate(t)
        if r != C.OK:
            return r
        if t.id in self.stored:
            return C.EXISTS if _same(t, self.stored[t.id]) else C.DIFFERENT_FIELDS
        if t.id in self.burned:
            return C.ALREADY_FAILED
        r = self._resolve(t, due) if t.flags & (POST | VOID) else self._move(t, group)
        if r in BURNING:
            self.burned.add(t.id)
        return r

    def _move(self, t: pb.Transfer, group: int) -> int:
        dr = self.accounts.get(t.debit_account_id)
        if dr is None:
            return C.DEBIT_NOT_FOUND
        cr = self.accounts.get(t.credit_account_id)
        if cr is None:
            return C.CREDIT_NOT_FOUND
        if dr.ledger != cr.ledger:
            return C.SAME_LEDGER
        if t.ledger != dr.ledger:
            return C.LEDGER_AS_ACCOUNTS
        d, c = dr.balances, cr.balances
        if dr.flags & DMNEC and d[0] + d[1] + t.amount > d[3]:
            return C.EXCEEDS_CREDITS
        if cr.flags & CMNED and c[2] + c[3] + t.amount > c[1]:
            return C.EXCEEDS_DEBITS
        pending = bool(t.flags & PENDING)
        d[0 if pending else 1] += t.amount
        c[2 if pending else 3] += t.amount
        if pending:
            timed = 0 < t.timeout_s <= 60
            self.holds[t.id] = Hold("open", t.amount, t.debit_account_id, t.credit_account_id, timed, group)
        self.stored[t.id] = Stored(t.debit_account_id, t.credit_account_id, t.amount, b"", t.user_data,
                                   t.timeout_s, t.ledger, t.code, t.flags)
        return C.OK

    def _resolve(self, t: pb.Transfer, due: set[bytes]) -> int:
        p = self.stored.get(t.pending_id)
        if p is None:
            return C.PENDING_NOT_FOUND
        if not p.flags & PENDING:
            return C.PENDING_NOT_PENDING
        if t.debit_account_id and t.debit_account_id != p.dr:
            return C.DIFFERENT_DEBIT
        if t.credit_account_id and t.credit_account_id != p.cr:
            return C.DIFFERENT_CREDIT
        if t.ledger and t.ledger != p.ledger:
            return C.DIFFERENT_LEDGER
        if t.code and t.code != p.code:
            return C.DIFFERENT_CODE
        h = self.holds[t.pending_id]
        state_result = {"posted": C.ALREADY_POSTED, "voided": C.ALREADY_VOIDED, "expired": C.EXPIRED}
        if h.state in state_result:
            return state_result[h.state]
        if t.pending_id in due:
            return C.EXPIRED
        is_post = bool(t.flags & POST)
        if is_post and t.amount > p.amount:
            return C.EXCEEDS_PENDING
        if not is_post and t.amount not in (0, p.amount):
            return C.DIFFERENT_AMOUNT
        amount = t.amount if is_post else p.amount
        d, c = self.accounts[p.dr].balances, self.accounts[p.cr].balances
        d[0] -= p.amount
        c[2] -= p.amount
        if is_post:
            d[1] += amount
            c[3] += amount
        h.state = "posted" if is_post else "voided"
        self.stored[t.id] = Stored(p.dr, p.cr, amount, t.pending_id, t.user_data, 0, p.ledger, p.code, t.flags)
        return C.OK


def _validate(t: pb.Transfer) -> int:
    """The validations the stateful test can trigger, in the ledger's order."""
    if t.flags & (POST | VOID):
        if t.flags & POST and t.amount == 0:
            return C.AMOUNT_MUST_NOT_BE_ZERO
        return C.OK
    if t.debit_account_id == t.credit_account_id:
        return C.ACCOUNTS_MUST_BE_DIFFERENT
    if t.amount == 0:
        return C.AMOUNT_MUST_NOT_BE_ZERO
    return C.OK


def _same(t: pb.Transfer, s: Stored) -> bool:
    if (t.flags, t.user_data, t.timeout_s, t.pending_id) != (s.flags, s.user_data, s.timeout_s, s.pending_id):
        return False
    if t.flags & (POST | VOID):
        return ((not t.debit_account_id or t.debit_account_id == s.dr)
                and (not t.credit_account_id or t.credit_account_id == s.cr)
                and (not t.ledger or t.ledger == s.ledger) and (not t.code or t.code == s.code)
                and (t.amount == s.amount or (bool(t.flags & VOID) and t.amount == 0)))
    return (t.debit_account_id, t.credit_account_id, t.amount, t.ledger, t.code) == (s.dr, s.cr, s.amount,
                                                                                     s.ledger, s.code)
