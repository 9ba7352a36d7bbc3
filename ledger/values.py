"""The ledger's plain values: what the servicer builds from the wire, what the
rules read and change, and what the store reads and writes. No protos here
(only the servicer converts), and no SQL.

Ids are 16 bytes; an absent optional id (pending_id, user_data) is b"".
Balances are micro-credits: debits_pending, debits_posted, credits_pending,
credits_posted, in that order wherever four of them travel together.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Transfer:
    """A transfer as a client or a marketplace operation asks for it (post and
    void may leave out what their pending transfer fixes). Not frozen: the
    servicer builds thousands per batch, and a frozen dataclass is slower to
    build; nothing changes one after it is built.

    ``amount_min`` > 0 makes a balancing debit (only the ledger's own
    OpenLease builds one; the wire cannot): it moves min(amount, what the
    debit account has available) if that is at least ``amount_min``, and a
    refusal never burns its id. Stored, it is a plain transfer of the amount
    it moved."""

    id: bytes
    debit_account_id: bytes = b""
    credit_account_id: bytes = b""
    amount: int = 0
    pending_id: bytes = b""
    user_data: bytes = b""
    timeout_s: int = 0
    ledger: int = 0
    code: int = 0
    flags: int = 0
    amount_min: int = 0


@dataclass(slots=True)
class StoredTransfer:
    """A transfer as stored: a post's or void's accounts, ledger and code are
    its pending transfer's. The fields after ``flags`` are known only where
    they are read or computed."""

    id: bytes
    debit_account_id: bytes
    credit_account_id: bytes
    amount: int
    pending_id: bytes
    user_data: bytes
    timeout_s: int
    ledger: int
    code: int
    flags: int
    seq: int = 0
    balances: tuple[int, ...] = ()  # both accounts' four balances right after it, debit side first
    expires_us: int | None = None  # a pending transfer with a timeout: when it expires (the engine)
    batch: int = 0  # the committed batch it belongs to (the books)
    created_at: datetime | None = None  # its batch's commit time (lookups)


@dataclass(slots=True)
class AccountState:
    """An account while a batch changes it (loaded and locked for the batch)."""

    ledger: int
    flags: int
    dp: int  # debits_pending
    dpo: int  # debits_posted
    cp: int  # credits_pending
    cpo: int  # credits_posted
    dirty: bool = False  # changed by the batch: to be written


class HoldState(enum.Enum):
    """A pending transfer's lifecycle: OPEN, then exactly one of the others,
    by a post, a void, or the expiry sweep's void.

        OPEN ──post──▶ POSTED
          ├───void──▶ VOIDED
          └─timeout─▶ EXPIRED
    """

    OPEN = "open"
    POSTED = "posted"
    VOIDED = "voided"
    EXPIRED = "expired"


@dataclass(slots=True)
class Hold:
    """A pending transfer's state as a batch sees it."""

    state: HoldState
    expires_us: int | None = None
    in_db: bool = True  # the open_holds row exists in the database


@dataclass(frozen=True, slots=True)
class Account:
    """An account as created and looked up (created_at is set by the ledger)."""

    id: bytes
    ledger: int
    kind: int
    flags: int = 0
    user_data: bytes = b""
    name: str = ""
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class BalanceRecord:
    """An account's balances right after one of its transfers."""

    seq: int
    transfer_id: bytes
    created_at: datetime
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a history: ``next_seq`` continues it, 0 at the end."""

    items: list[T]
    next_seq: int


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A committed batch: its seq range and its link in the hash chain."""

    batch: int
    first_seq: int
    last_seq: int
    prev_hash: bytes
    hash: bytes
    committed_at: datetime


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last committed batch, as the chain head row says."""

    batch: int
    last_seq: int
    hash: bytes
