"""The ledger's engine with its state in memory instead of PostgreSQL, and a
clock the test moves: what the writer loads for a batch and stores after it,
kept in dicts, so that the model-based test can run thousands of steps in
process and shrink a failure to its smallest form.

It is the seam the in-process run owns: the engine (``Batch``), the hold
states and the sweep's voids are the ledger's own code; only the storage and
the clock are replaced. Account creation keeps the one rule the test uses
(same id: EXISTS with the same fields, else EXISTS_WITH_DIFFERENT_FIELDS)."""

from __future__ import annotations

from idlegrid.ledger.codes import BATCH_SIZE_MAX
from idlegrid.ledger.engine import Batch
from idlegrid.ledger.v1 import ledger_pb2 as pb
from idlegrid.ledger.values import AccountState, Hold, HoldState, StoredTransfer, Transfer
from idlegrid.ledger.writer import expiry_void

START_US = 1_700_000_000_000_000  # the clock's start, µs since the epoch


def transfer(t: pb.Transfer) -> Transfer:
    return Transfer(t.id, t.debit_account_id, t.credit_account_id, t.amount, t.pending_id, t.user_data,
                    t.timeout_s, t.ledger, t.code, t.flags)


class MemoryLedger:
    def __init__(self) -> None:
        self.now_us = START_US
        self.accounts: dict[bytes, AccountState] = {}
        self.kinds: dict[bytes, int] = {}
        self.stored: dict[bytes, StoredTransfer] = {}
        self.failed: dict[bytes, int] = {}
        self.holds: dict[bytes, Hold] = {}
        self.last_seq = 0
        self.totals: dict[int, list[int]] = {}  # per ledger, moved by every batch

    def create_accounts(self, accounts: list[pb.Account]) -> list[int]:
        out = []
        for a in accounts:
            old = self.accounts.get(a.id)
            if old is None:
                self.accounts[a.id] = AccountState(a.ledger, a.flags, 0, 0, 0, 0)
                self.kinds[a.id] = a.kind
                out.append(pb.CREATE_ACCOUNT_RESULT_OK)
            elif (old.ledger, old.flags, self.kinds[a.id]) == (a.ledger, a.flags, a.kind):
                out.append(pb.CREATE_ACCOUNT_RESULT_EXISTS)
            else:
                out.append(pb.CREATE_ACCOUNT_RESULT_EXISTS_WITH_DIFFERENT_FIELDS)
        return out

    def submit(self, transfers: list[Transfer], *, internal: bool = False) -> list[int]:
        """One request, as one batch committed at the current clock."""
        batch = Batch(self.now_us, self.accounts, self.stored, self.failed, self.holds,
                      first_seq=self.last_seq + 1)
        results = batch.apply(transfers, internal=internal)
        for ledger, delta in batch.totals_delta().items():  # raises when debits and credits differ
            total = self.totals.setdefault(ledger, [0, 0, 0, 0])
            for i in range(4):
                total[i] += delta[i]
        self.last_seq += len(batch.created)
        self.failed.update(batch.burned)
        for a in self.accounts.values():
            a.dirty = False
        return results

    def sweep(self) -> list[int]:
        """The expiry sweep: voids the open holds whose timeout passed."""
        due = sorted((h.expires_us, pid) for pid, h in self.holds.items()
                     if h.state is HoldState.OPEN and h.expires_us is not None and h.expires_us <= self.now_us)
        voids = [expiry_void(pid) for _, pid in due[:BATCH_SIZE_MAX]]
        return self.submit(voids, internal=True) if voids else []
