"""Held node aggregates (ClearWindow's earnings with ``hold``): a pending
transfer escrow:jobs -> provider, no timeout. Each ends exactly once, as a
held earning of a job does (idlegrid.ledger.earnings, whose machinery this
reuses):

| operation | transfers (debit -> credit) |
|---|---|
| release | post the aggregate in full |
| void    | linked: void the aggregate; escrow:jobs -> each consumer who paid for it (code REFUND), summing to it |

The aggregate's amount and provider are read from the ledger; the refund
split comes from metering (which knows whose jobs the aggregate settles) and
must sum exactly to the aggregate. Ids derive from the aggregate id (and the
consumer, for a refund); a void's chain is whole: a retry with another split
is a CONFLICT, never a second refund.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from idlegrid.common.errors import InvalidArgument, NotFound
from idlegrid.common.money import AMOUNT_MAX
from idlegrid.ledger.codes import (
    BATCH_SIZE_MAX,
    CODE_EARNING,
    CODE_REFUND,
    LEDGER_CREDITS,
    LINKED,
    PENDING,
    POST,
    VOID,
)
from idlegrid.ledger.earnings import check_ids, resolve_held
from idlegrid.ledger.ids import ESCROW, derive
from idlegrid.ledger.market import Outcome
from idlegrid.ledger.store import reads
from idlegrid.ledger.values import StoredTransfer, Transfer
from idlegrid.ledger.writer import BatchWriter

REFUNDS_MAX = 1000


def aggregate_release_id(aggregate_id: bytes) -> bytes:
    return derive("aggregate-release", aggregate_id)


def aggregate_void_id(aggregate_id: bytes) -> bytes:
    return derive("aggregate-void", aggregate_id)


def aggregate_refund_id(aggregate_id: bytes, consumer_account_id: bytes) -> bytes:
    return derive("aggregate-refund", aggregate_id, consumer_account_id)


@dataclass(frozen=True, slots=True)
class VoidAggregate:
    aggregate_id: bytes
    refunds: list[tuple[bytes, int]]  # (consumer account, amount)


def _check_refunds(v: VoidAggregate) -> None:
    if not 1 <= len(v.refunds) <= REFUNDS_MAX:
        raise InvalidArgument(f"refunds: between 1 and {REFUNDS_MAX} per aggregate, got {len(v.refunds)}")
    for consumer, amount in v.refunds:
        if len(consumer) != 16 or consumer == bytes(16):
            raise InvalidArgument("each refund's consumer_account_id must be 16 non-zero bytes")
        if not 1 <= amount <= AMOUNT_MAX:
            raise InvalidArgument(f"a refund's amount must be in [1, {AMOUNT_MAX}], got {amount}")
    if len({c for c, _ in v.refunds}) != len(v.refunds):
        raise InvalidArgument("a consumer appears twice in one aggregate's refunds")


class Aggregates:
    def __init__(self, writer: BatchWriter, pool: asyncpg.Pool) -> None:
        self._writer = writer
        self._pool = pool

    async def _held(self, ids: list[bytes]) -> dict[bytes, StoredTransfer]:
        """The aggregates that were created held (pending earnings from escrow)."""
        found = await reads.transfers_by_id(self._pool, ids)
        return {i: t for i, t in found.items()
                if t.flags & PENDING and t.code == CODE_EARNING and t.debit_account_id == ESCROW}

    async def release(self, aggregate_ids: list[bytes]) -> list[Outcome]:
        """Posts each held aggregate in full, in one group commit."""
        held = await self._held(check_ids(aggregate_ids, "aggregate_id"))
        chains = {i: [Transfer(id=aggregate_release_id(i), pending_id=i, amount=e.amount, flags=POST)]
                  for i, e in held.items()}
        return await resolve_held(self._writer, aggregate_ids, chains, {i: e.amount for i, e in held.items()})

    async def void(self, voids: list[VoidAggregate]) -> list[Outcome]:
        """Voids each held aggregate and refunds it, linked, in one group
        commit. A refund split that does not sum to the aggregate, or names
        an unknown account, refuses the whole request before anything is written."""
        ids = check_ids([v.aggregate_id for v in voids], "aggregate_id")
        for v in voids:
            _check_refunds(v)
        if sum(1 + len(v.refunds) for v in voids) > BATCH_SIZE_MAX:
            raise InvalidArgument(f"at most {BATCH_SIZE_MAX} transfers (aggregates + refunds) per request")
        held = await self._held(ids)
        consumers = {c for v in voids if v.aggregate_id in held for c, _ in v.refunds}
        known = await reads.accounts_by_id(self._pool, list(consumers)) if consumers else {}
        for c in consumers:
            if c not in known:
                raise NotFound(f"refund account {c.hex()} not found")
            if known[c].ledger != LEDGER_CREDITS:
                raise InvalidArgument("a refund account is on another ledger")
        chains = {}
        for v in voids:
            e = held.get(v.aggregate_id)
            if e is None:
                continue
            if sum(a for _, a in v.refunds) != e.amount:
                raise InvalidArgument(f"the refunds of aggregate {v.aggregate_id.hex()} sum to "
                                      f"{sum(a for _, a in v.refunds)}, not its {e.amount}")
            chain = [Transfer(id=aggregate_void_id(e.id), pending_id=e.id, flags=VOID | LINKED)]
            chain += [Transfer(id=aggregate_refund_id(e.id, c), debit_account_id=ESCROW, credit_account_id=c,
                               amount=a, user_data=e.id, ledger=LEDGER_CREDITS, code=CODE_REFUND, flags=LINKED)
                      for c, a in v.refunds]
            chain[-1].flags &= ~LINKED
            chains[v.aggregate_id] = chain
        return await resolve_held(self._writer, ids, chains, {i: e.amount for i, e in held.items()},
                                  whole_chains=True)
