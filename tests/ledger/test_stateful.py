"""Model-based tests of the ledger (the rules are in tests/ledger/machine.py,
the oracle in tests/ledger/oracle.py), run twice:

- in process, against the engine (``idlegrid.ledger.engine``) with its state
  in memory (tests/ledger/memory.py) and a clock the test moves: thousands of
  steps in seconds, holds expiring exactly when the clock says, and a failure
  shrunk to its smallest sequence of steps;
- through the real gRPC API and PostgreSQL, shorter: the same rules against
  the whole service, where expiry by the database clock is not under the
  test's control (see ``GrpcMachine``).
"""

from __future__ import annotations

import asyncio
import time

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule, run_state_machine_as_test

from idlegrid.ledger.v1 import ledger_pb2 as pb
from tests.harness import eventually
from tests.ledger.draws import SHORT_TIMEOUT_S
from tests.ledger.machine import LedgerMachine
from tests.ledger.memory import MemoryLedger, transfer
from tests.ledger.oracle import PENDING, VOID
from tests.ledger.support import run_verify

US_PER_S = 1_000_000
WAIT_S_MAX = 30.0  # a bound against hanging while waiting for the sweep
RPC_TIMEOUT_S = 60


class EngineMachine(LedgerMachine):
    """The engine in process: the clock moves only by ``tick``, and the
    sweep runs only by ``sweep``, so every answer is determined."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = MemoryLedger()
        self.expires_at_us: dict[bytes, int] = {}

    def create_accounts(self, accounts):
        return self.ledger.create_accounts(accounts)

    def create_transfers(self, items):
        return self.ledger.submit([transfer(t) for t in items])

    def balances(self, ids):
        accts = self.ledger.accounts
        return {i: [accts[i].dp, accts[i].dpo, accts[i].cp, accts[i].cpo] for i in ids}

    def transfers(self, ids):
        return {i: self.ledger.stored[i] for i in ids if i in self.ledger.stored}

    def sweep_points(self, groups):
        """Nothing swept behind the oracle's back (``sweep`` is a step, seen
        by the snapshot after it); exactly the groups past their time are due."""
        due = 0
        while due < len(groups) and self.expires_at_us[groups[due][0]] <= self.ledger.now_us:
            due += 1
        return [(0, due)]

    def holds_created(self, pids):
        for pid in pids:
            self.expires_at_us[pid] = self.ledger.now_us + SHORT_TIMEOUT_S * US_PER_S

    def check_books(self):
        """Per ledger, debits equal credits (pending and posted) over all
        accounts, and equal the totals that the batches moved."""
        sums: dict[int, list[int]] = {}
        for a in self.ledger.accounts.values():
            s = sums.setdefault(a.ledger, [0, 0, 0, 0])
            for i, v in enumerate((a.dp, a.dpo, a.cp, a.cpo)):
                s[i] += v
        for ledger, (dp, dpo, cp, cpo) in sums.items():
            assert (dp, dpo) == (cp, cpo), (ledger, sums[ledger])
            assert self.ledger.totals.get(ledger, [0, 0, 0, 0]) == sums[ledger], ledger

    @rule(step_us=st.sampled_from([250_000, 500_000, 1_000_000]))
    def tick(self, step_us: int) -> None:
        """Time passes: holds with a 1 s timeout come due (not yet swept)."""
        self.ledger.now_us += step_us

    @rule()
    def sweep(self) -> None:
        """The expiry sweep voids every hold that is due."""
        assert all(r == pb.CREATE_TRANSFER_RESULT_OK for r in self.ledger.sweep())


class GrpcMachine(LedgerMachine):
    """The service through gRPC on PostgreSQL, its sweep running every 0.2 s.

    Expiry by the database clock is not under the test's control: a hold with
    a 1 s timeout may be swept before or after a request. For each request
    the oracle therefore tries the few possible points of the sweep (swept
    holds are a prefix of the timed holds in creation order; holds already
    due answer PENDING_TRANSFER_EXPIRED) and keeps the first that reproduces
    the answers with the fewest sweeps (a hold created more than 1 s before
    the request was sent is surely due); a snapshot after each step (expiry
    voids read before and after the balances, until stable) tells which holds
    were really swept."""

    loop: asyncio.AbstractEventLoop  # set by the test: the loop the stub lives on
    stub = None
    db_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.expires_by: dict[bytes, float] = {}  # timed hold -> a time by which it has expired
        self.waited = False

    def call(self, method: str, request):
        async def go():
            return await getattr(self.stub, method)(request, timeout=RPC_TIMEOUT_S)
        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(RPC_TIMEOUT_S)

    def create_accounts(self, accounts):
        return list(self.call("CreateAccounts", pb.CreateAccountsRequest(accounts=accounts)).results)

    def create_transfers(self, items):
        return list(self.call("CreateTransfers", pb.CreateTransfersRequest(transfers=items)).results)

    def balances(self, ids):
        r = self.call("LookupAccounts", pb.LookupAccountsRequest(ids=ids))
        return {a.id: [a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted] for a in r.accounts}

    def transfers(self, ids):
        return {t.id: t for t in self.call("LookupTransfers", pb.LookupTransfersRequest(ids=ids)).transfers}

    def sweep_points(self, groups):
        sent_at = time.time()  # the same clock as the database's (same machine)
        due_min = 0  # holds created (and so expiring) surely before this request was sent are due
        while due_min < len(groups) and self.expires_by[groups[due_min][0]] < sent_at:
            due_min += 1
        return [(swept, due) for swept in range(len(groups) + 1)
                for due in range(max(swept, due_min), len(groups) + 1)]

    def holds_created(self, pids):
        answered_at = time.time()
        for pid in pids:
            self.expires_by[pid] = answered_at + SHORT_TIMEOUT_S

    def check_books(self):
        rep = asyncio.run_coroutine_threadsafe(run_verify(self.db_url), self.loop).result(RPC_TIMEOUT_S)
        assert rep.ok, rep.problems

    @precondition(lambda self: not self.waited and any(
        t.flags & PENDING and t.timeout_s == SHORT_TIMEOUT_S for t in self.sent))
    @rule()
    def expire_holds(self) -> None:
        """Waits until the sweep has voided every open hold with a 1 s timeout,
        probing each of them meanwhile with a void of the wrong amount: it
        answers PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT while the hold is open and
        PENDING_TRANSFER_EXPIRED once its time has passed, swept or not yet
        (at most once per run: it costs about a second)."""
        self.waited = True

        def all_swept() -> bool:
            self.snapshot()
            open_ = [pid for pid, h in self.model.holds.items() if h.timed and h.state == "open"]
            if open_:
                self._send([pb.Transfer(id=self.new_id(), pending_id=pid, amount=self.model.holds[pid].amount + 1,
                                        flags=VOID) for pid in open_])
            return not open_

        # This runs in hypothesis' thread (the stub's loop stays free): poll on a loop of its own.
        asyncio.run(eventually(all_swept, what="the sweep to void the expired holds", timeout_s=WAIT_S_MAX,
                               every_s=0.05))


def test_engine_behaves_like_the_oracle():
    """Random sequences of ledger operations applied to the engine give, item
    by item and balance by balance, what the oracle predicts, with holds
    expiring exactly when the clock passes their timeout; the books balance
    after every run. A failure is shrunk to its smallest sequence of steps."""
    cfg = settings(max_examples=100, stateful_step_count=50, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])
    run_state_machine_as_test(EngineMachine, settings=cfg)


async def test_ledger_behaves_like_the_oracle_through_grpc(ledger, db_url):
    """The same through the real gRPC API and PostgreSQL, with the real
    expiry sweep; verify passes after every run."""
    GrpcMachine.loop = asyncio.get_running_loop()
    GrpcMachine.stub = ledger
    GrpcMachine.db_url = db_url
    # No shrink phase: a run that waits for the sweep costs a second, so shrinking a
    # failure could take minutes; the failing steps are printed as found (and
    # replayed first next time from hypothesis' example database). The in-process
    # run above shrinks.
    cfg = settings(max_examples=8, stateful_step_count=30, deadline=None,
                   phases=(Phase.explicit, Phase.reuse, Phase.generate),
                   suppress_health_check=list(HealthCheck))
    await asyncio.to_thread(run_state_machine_as_test, GrpcMachine, settings=cfg)
