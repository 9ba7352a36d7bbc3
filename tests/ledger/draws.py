"""What the model-based test sends: transfers of each kind drawn from
hypothesis data, for the rules in tests/ledger/machine.py. Every draw has
the same shape whatever the ledger answered before (answers may depend on the
sweep's timing), so that hypothesis sees a deterministic choice sequence."""

from __future__ import annotations

import os

from hypothesis import strategies as st

from idlegrid.ledger.v1 import ledger_pb2 as pb
from tests.ledger.oracle import DMNEC, PENDING, POST, VOID, Model

SHORT_TIMEOUT_S = 1  # expires during the test
LONG_TIMEOUT_S = 3600  # never expires during the test

KINDS = ["plain", "plain", "pending", "pending", "post", "void", "overdraft", "duplicate", "duplicate",
         "conflict", "burned"]


def chance(data, percent: int, label: str) -> bool:
    """True with about ``percent`` % probability, False at the boundaries
    hypothesis likes to try (and shrinks towards)."""
    x = data.draw(st.integers(0, 999), label=label)
    return 300 <= x < 300 + 10 * percent


def pick(data, seq: list, label: str):
    """An element of ``seq`` chosen by a draw whose shape does not depend on
    ``seq`` (which may differ between replays when it follows from answers)."""
    i = data.draw(st.integers(0, 1 << 16), label=label)
    return seq[i % len(seq)] if seq else None


class TransferDraws:
    """Draws transfers against the oracle's state (``model``), the transfers
    ``sent`` so far and fresh ids (``new_id``)."""

    model: Model
    sent: list[pb.Transfer]

    def new_id(self) -> bytes:
        raise NotImplementedError

    def _is_copy(self, t: pb.Transfer) -> bool:
        return any(t is s for s in self.sent)

    def _draw_item(self, data, earlier: list[pb.Transfer], kind: str, *, known_only: bool = False) -> pb.Transfer:
        """One transfer of ``kind``. Every draw has the same shape whatever the
        ledger answered before (answers may depend on the sweep's timing), so
        that hypothesis sees a deterministic choice sequence."""
        if kind in ("plain", "pending", "overdraft"):
            return self._draw_move(data, kind)
        if kind in ("post", "void"):
            return self._draw_resolve(data, earlier, kind, known_only)
        which = data.draw(st.integers(0, 1 << 16), label="earlier transfer")
        change = data.draw(st.booleans(), label="change user_data")
        if not self.sent:
            return self._draw_item(data, earlier, "plain")
        if kind == "duplicate":  # the very same transfer again (the same object: flags as sent)
            return self.sent[which % len(self.sent)]
        if kind == "burned":
            burned = [t for t in self.sent if t.id in self.model.burned] or self.sent
            return burned[which % len(burned)]
        # a conflict: a sent id with a different body (or a failed one, reused)
        t = pb.Transfer()
        t.CopyFrom(self.sent[which % len(self.sent)])
        if change or t.flags & (POST | VOID):
            t.user_data = os.urandom(16)
        else:
            t.amount += 1
        return t

    def _draw_move(self, data, kind: str) -> pb.Transfer:
        m = self.model
        accts = list(m.accounts)  # creation order
        dr = pick(data, accts, "dr")
        flagged = pick(data, [k for k in accts if m.accounts[k].flags == DMNEC], "overdrawn")
        amount = 0 if chance(data, 5, "zero amount") else data.draw(
            st.sampled_from([50, 1, 7, 120, 400, 50, 120]), label="amount")
        more = data.draw(st.integers(0, 30), label="overdraft by")
        if kind == "overdraft":
            dr = flagged
            d = m.accounts[dr].balances
            amount = max(1, d[3] - d[0] - d[1]) + more
        anywhere = chance(data, 15, "credit on any ledger")
        cr = pick(data, [k for k in accts if k != dr and (anywhere or m.accounts[k].ledger == m.accounts[dr].ledger)],
                  "cr")
        if chance(data, 3, "unknown debit account"):
            dr = self.new_id()
        elif chance(data, 3, "unknown credit account"):
            cr = self.new_id()
        dr_ledger = m.accounts[dr].ledger if dr in m.accounts else 1
        wrong_ledger = chance(data, 6, "wrong ledger")
        ledger = 3 - dr_ledger if wrong_ledger else dr_ledger
        timeout = data.draw(st.sampled_from([0, SHORT_TIMEOUT_S, SHORT_TIMEOUT_S, LONG_TIMEOUT_S]), label="timeout")
        same = chance(data, 3, "same account")
        if same:
            cr = dr  # ACCOUNTS_MUST_BE_DIFFERENT
        user_data = data.draw(st.sampled_from([b"", b"u" * 16]), label="user_data")
        code = data.draw(st.integers(1, 3), label="code")
        if kind != "pending":
            timeout = 0
        return pb.Transfer(id=self.new_id(), debit_account_id=dr, credit_account_id=cr, amount=amount,
                           ledger=ledger, code=code, flags=PENDING if kind == "pending" else 0,
                           timeout_s=timeout, user_data=user_data)

    def _draw_resolve(self, data, earlier: list[pb.Transfer], kind: str, known_only: bool) -> pb.Transfer:
        m = self.model
        known = [pid for pid, s in m.stored.items() if s.flags & PENDING]
        here = [t.id for t in earlier if t.flags & PENDING]
        source = data.draw(st.sampled_from(["this request", "recent", "recent", "any", "unknown"]),
                           label="which hold")
        idx = data.draw(st.integers(0, 1 << 16), label="hold")
        if here and source == "this request":
            pid = here[idx % len(here)]
        elif known and (source != "unknown" or known_only):
            recent = known[-6:] if source != "any" else known  # recent holds are more often still open
            pid = recent[idx % len(recent)]
        else:
            pid = self.new_id()  # PENDING_TRANSFER_NOT_FOUND
        p_amount = m.stored[pid].amount if pid in m.stored else next(
            (t.amount for t in earlier if t.id == pid), 10)
        post_amount = data.draw(st.sampled_from(
            [p_amount, max(1, p_amount // 2), p_amount, 1, p_amount + 1, 0]), label="post amount")
        void_amount = data.draw(st.sampled_from([0, p_amount, 0, p_amount + 1]), label="void amount")
        spell = data.draw(st.booleans(), label="spell out accounts")
        wrong_code = chance(data, 10, "wrong code")
        is_post = kind == "post"
        t = pb.Transfer(id=self.new_id(), pending_id=pid, amount=post_amount if is_post else void_amount,
                        flags=POST if is_post else VOID)
        if pid in m.stored and spell:
            s = m.stored[pid]
            t.debit_account_id, t.credit_account_id, t.ledger, t.code = s.dr, s.cr, s.ledger, s.code
            if wrong_code:
                t.code += 1  # PENDING_TRANSFER_HAS_DIFFERENT_CODE
        return t

