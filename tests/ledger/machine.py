"""The rules of the ledger's model-based test, shared by its two runs (in
process against the engine, and through gRPC and PostgreSQL; see
test_stateful.py). Hypothesis drives random accounts (with and without the
balance flags, on two ledgers), transfers, holds with and without timeouts,
partial posts, voids, expiries, linked chains (failing ones, and chains left
open at the end of a request), exact duplicates, conflicting and burned ids,
and checks every per-item result and every balance against the in-memory
oracle (tests/ledger/oracle.py) after each step. At the end of each run the
stored transfers equal the oracle's and the books balance.

A run subclasses ``LedgerMachine`` with the ledger under test (the methods
under "the ledger under test") and with how holds with a 1 s timeout expire:
``sweep_points`` says which holds may have been swept (voided by the sweep)
or be due (past their timeout) when a request arrives; the oracle tries each
point in turn and keeps the first that reproduces the ledger's answers.
"""

from __future__ import annotations

import os

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from idlegrid.ledger.ids import expiry_void_id
from idlegrid.ledger.v1 import ledger_pb2 as pb
from tests.ledger.draws import KINDS, SHORT_TIMEOUT_S, TransferDraws, chance, pick
from tests.ledger.oracle import CMNED, DMNEC, LINKED, PENDING, VOID, Acct, Model

R = pb.CreateTransferResult
EXPIRED_FLAG = pb.TRANSFER_FLAG_EXPIRED


class LedgerMachine(TransferDraws, RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.sent: list[pb.Transfer] = []  # every transfer sent, for duplicates and conflicts
        self.confirmed: set[bytes] = set()  # timed holds whose expiry void was seen
        self.step = 0
        self.salt = os.urandom(8)  # ids unique across runs on one database
        self.ids = 0

    # -- the ledger under test ----------------------------------------------------

    def create_accounts(self, accounts: list[pb.Account]) -> list[int]:
        raise NotImplementedError

    def create_transfers(self, items: list[pb.Transfer]) -> list[int]:
        raise NotImplementedError

    def balances(self, ids: list[bytes]) -> dict[bytes, list[int]]:
        """[debits_pending, debits_posted, credits_pending, credits_posted] per account."""
        raise NotImplementedError

    def transfers(self, ids: list[bytes]) -> dict:
        """The stored transfers among ``ids``, by id (anything with a Transfer's fields)."""
        raise NotImplementedError

    def sweep_points(self, groups: list[list[bytes]]) -> list[tuple[int, int]]:
        """The (swept, due) points to try for the request being sent: the
        first ``swept`` groups of open timed holds (in creation order) were
        voided by the sweep, the first ``due`` are past their timeout."""
        raise NotImplementedError

    def holds_created(self, pids: list[bytes]) -> None:
        """The request just answered created these timed holds."""

    def check_books(self) -> None:
        """The books balance (at the end of a run)."""

    # -- rules -----------------------------------------------------------------

    def new_id(self) -> bytes:
        self.ids += 1
        return self.salt + self.ids.to_bytes(8, "big")

    def _create_accounts(self, specs: list[tuple[int, int]]) -> None:
        accts = [pb.Account(id=self.new_id(), ledger=lg, kind=pb.ACCOUNT_KIND_CONSUMER, flags=fl) for lg, fl in specs]
        assert self.create_accounts(accts) == [pb.CREATE_ACCOUNT_RESULT_OK] * len(accts)
        for a in accts:
            self.model.accounts[a.id] = Acct(a.ledger, a.flags)

    @initialize()
    def accounts(self) -> None:
        """Two plain accounts, a consumer that must not overdraw, an account
        whose credits must not exceed its debits (ledger 1), and two accounts
        on ledger 2 (one flagged); both consumers funded, and a hold with a 1 s
        timeout on the first."""
        self._create_accounts([(1, 0), (1, 0), (1, DMNEC), (1, CMNED), (2, 0), (2, DMNEC)])
        a, _, consumer, _, b, consumer2 = list(self.model.accounts)
        self._send([pb.Transfer(id=self.new_id(), debit_account_id=a, credit_account_id=consumer, amount=300,
                                ledger=1, code=1),
                    pb.Transfer(id=self.new_id(), debit_account_id=b, credit_account_id=consumer2, amount=300,
                                ledger=2, code=1)])
        # a hold that expires during the run, so that expiry has something to do
        self._send([pb.Transfer(id=self.new_id(), debit_account_id=consumer, credit_account_id=a, amount=100,
                                ledger=1, code=1, flags=PENDING, timeout_s=SHORT_TIMEOUT_S)])

    @rule(data=st.data(), ledger=st.sampled_from([1, 1, 2]), flags=st.sampled_from([0, DMNEC, CMNED]))
    def add_account(self, data, ledger: int, flags: int) -> None:
        """A new account; or an existing one created again: EXISTS with the
        same fields, EXISTS_WITH_DIFFERENT_FIELDS with others."""
        new = data.draw(st.sampled_from([True, True, False]), label="new")
        aid = pick(data, list(self.model.accounts), "existing")
        same = data.draw(st.booleans(), label="same fields")
        if new:
            self._create_accounts([(ledger, flags)])
            return
        a = self.model.accounts[aid]
        flags = a.flags if same else (a.flags ^ DMNEC if a.flags != CMNED else 0)
        got = self.create_accounts([pb.Account(id=aid, ledger=a.ledger, kind=pb.ACCOUNT_KIND_CONSUMER, flags=flags)])
        assert got == [pb.CREATE_ACCOUNT_RESULT_EXISTS if same
                       else pb.CREATE_ACCOUNT_RESULT_EXISTS_WITH_DIFFERENT_FIELDS]

    @rule(data=st.data(), n=st.integers(1, 5))
    def mixed_batch(self, data, n: int) -> None:
        """One CreateTransfers request of 1..5 random items of any kind, some linked."""
        items: list[pb.Transfer] = []
        for _ in range(n):
            t = self._draw_item(data, items, data.draw(st.sampled_from(KINDS), label="kind"))
            link = chance(data, 25, "link to the next")
            if link and not self._is_copy(t):
                t.flags |= LINKED
            items.append(t)
        self._send(items)

    @rule(data=st.data(), n=st.integers(2, 4), ending=st.sampled_from(["closed", "closed", "open", "then more"]))
    def chain(self, data, n: int, ending: str) -> None:
        """A linked chain of 2..4 transfers, holds, posts and voids (it fails
        whole when one item fails, e.g. an overdraft), sometimes left open at
        the end of the request, sometimes followed by an unrelated transfer."""
        items = []
        for _ in range(n):
            kind = data.draw(st.sampled_from(["plain", "pending", "post", "void", "overdraft"]), label="kind")
            t = self._draw_item(data, items, kind)
            t.flags |= LINKED
            items.append(t)
        if ending != "open":
            items[-1].flags &= ~LINKED
        if ending == "then more":
            items.append(self._draw_item(data, items, "plain"))
        self._send(items)

    @rule(data=st.data())
    def hold(self, data) -> None:
        """A pending transfer (no timeout, 1 s or an hour)."""
        self._send([self._draw_item(data, [], "pending")])

    @rule(data=st.data(), kind=st.sampled_from(["post", "post", "void"]))
    def resolve(self, data, kind: str) -> None:
        """Posts (in full, partially, too much or zero) or voids a known hold,
        open or already resolved (ALREADY_POSTED / ALREADY_VOIDED / EXPIRED)."""
        self._send([self._draw_item(data, [], kind, known_only=True)])

    @rule(data=st.data(), n=st.integers(1, 3))
    def again(self, data, n: int) -> None:
        """Transfers sent before, again: exactly the same (EXISTS for stored
        ids, ID_ALREADY_FAILED for burned ones, a fresh try for the others) or
        with a different body (EXISTS_WITH_DIFFERENT_FIELDS)."""
        items: list[pb.Transfer] = []
        for _ in range(n):
            kind = data.draw(st.sampled_from(["duplicate", "conflict", "burned"]), label="kind")
            items.append(self._draw_item(data, items, kind))
        self._send(items)

    @rule(data=st.data(), ledger=st.sampled_from([1, 2]), amount=st.integers(50, 500))
    def fund(self, data, ledger: int, amount: int) -> None:
        """A plain transfer from an unflagged account to a flagged one, so that
        flagged accounts get something to spend."""
        m = self.model.accounts
        src = pick(data, [k for k, a in m.items() if a.flags == 0 and a.ledger == ledger], "from")
        dst = pick(data, [k for k, a in m.items() if a.flags == DMNEC and a.ledger == ledger], "to")
        self._send([pb.Transfer(id=self.new_id(), debit_account_id=src, credit_account_id=dst, amount=amount,
                                ledger=ledger, code=1)])

    @invariant()
    def balances_match_the_oracle(self) -> None:
        self.snapshot()

    def teardown(self) -> None:
        """The stored transfers are exactly the oracle's, burned ids are not
        stored, and the books balance."""
        stored = self.model.stored
        ids = sorted(stored) + sorted(self.model.burned)
        if ids:
            found = self.transfers(ids)
            assert set(found) == set(stored)
            for tid, s in stored.items():
                t = found[tid]
                assert (t.debit_account_id, t.credit_account_id, t.amount, t.pending_id, t.user_data, t.timeout_s,
                        t.ledger, t.code, t.flags) == (s.dr, s.cr, s.amount, s.pending_id, s.user_data, s.timeout_s,
                                                       s.ledger, s.code, s.flags), tid.hex()
        self.check_books()

    # -- sending and checking --------------------------------------------------------

    def open_timed_groups(self) -> list[list[bytes]]:
        """The open holds with a short timeout, grouped by the request that
        created them, in creation order (the order in which they expire)."""
        groups: list[list[bytes]] = []
        for pid, h in sorted(((p, h) for p, h in self.model.holds.items() if h.timed and h.state == "open"),
                             key=lambda ph: ph[1].group):
            if groups and self.model.holds[groups[-1][0]].group == h.group:
                groups[-1].append(pid)
            else:
                groups.append([pid])
        return groups

    def _send(self, items: list[pb.Transfer]) -> None:
        self.step += 1
        groups = self.open_timed_groups()
        points = self.sweep_points(groups)
        got = self.create_transfers(items)
        self.sent.extend(t for t in items if not self._is_copy(t))
        tried = []
        for swept, due in points:
            candidate = self.model.clone()
            for g in groups[:swept]:
                for pid in g:
                    candidate.expire(pid)
            due_ids = {pid for g in groups[:due] for pid in g}
            want = candidate.apply(items, due=due_ids, group=self.step)
            if want == got:
                self.model = candidate
                self.holds_created([pid for pid, h in candidate.holds.items() if h.timed and h.group == self.step])
                return
            tried.append((swept, due, [R.Name(x) for x in want]))
        raise AssertionError(
            f"ledger answered {[R.Name(x) for x in got]} to {[_show(t) for t in items]}; "
            f"the oracle expected one of {tried} (sweep points: swept, due)")

    def snapshot(self) -> None:
        """Reads which timed holds the sweep has voided (before and after the
        balances, until stable), applies those to the oracle, and compares
        every balance."""
        watch = sorted(pid for pid, h in self.model.holds.items() if h.timed and pid not in self.confirmed)
        void_ids = {expiry_void_id(pid): pid for pid in watch}

        def expiries() -> dict:
            return {void_ids[tid]: t for tid, t in self.transfers(list(void_ids)).items()} if void_ids else {}

        ids = sorted(self.model.accounts)
        while True:
            before = expiries()
            balances = self.balances(ids)
            after = expiries()
            if before.keys() == after.keys():
                break
        for pid in watch:
            h = self.model.holds[pid]
            v = after.get(pid)
            if v is None:
                assert h.state != "expired", f"the oracle had {pid.hex()} swept, the ledger has no expiry void"
                continue
            assert h.state in ("open", "expired"), f"hold {pid.hex()} was {h.state} and then expired too"
            assert (v.pending_id, v.flags, v.amount, v.debit_account_id, v.credit_account_id) == (
                pid, VOID | EXPIRED_FLAG, h.amount, h.dr, h.cr)
            if h.state == "open":
                self.model.expire(pid)
            self.confirmed.add(pid)
        for aid in ids:
            assert balances[aid] == self.model.accounts[aid].balances, (
                aid.hex(), balances[aid], self.model.accounts[aid].balances)


def _show(t: pb.Transfer) -> str:
    return (f"<{t.id.hex()[-6:]} dr={t.debit_account_id.hex()[-6:]} cr={t.credit_account_id.hex()[-6:]} "
            f"amt={t.amount} pid={t.pending_id.hex()[-6:]} ledger={t.ledger} code={t.code} "
            f"flags={t.flags} timeout={t.timeout_s}>")
