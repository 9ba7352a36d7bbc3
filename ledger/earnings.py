"""Held earnings: a job settled with ``hold_earning`` credits the provider's
share as a pending transfer escrow:jobs -> provider (no timeout). It ends
exactly once, by one of:

| operation | transfers (debit -> credit) |
|---|---|
| release | post the held earning in full |
| void    | linked: void the held earning; escrow:jobs -> the consumer whose reservation paid for the job, the same amount (code REFUND) |

The amounts and the consumer are read from the ledger itself (the job's
pending earning and its reservation, both immutable), never taken from the
caller, so a refund goes exactly to the partner who paid, for exactly the
provider's share. Transfer ids derive from the job id: a retry answers
ALREADY_APPLIED, and a release and a void of the same job never both apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from idlegrid.common.errors import InvalidArgument
from idlegrid.ledger.codes import (
    CODE_EARNING,
    CODE_REFUND,
    LINKED,
    PENDING,
    POST,
    VOID,
    R,
)
from idlegrid.ledger.ids import ESCROW, derive
from idlegrid.ledger.market import Outcome, earning_id, reserve_id
from idlegrid.ledger.store import reads
from idlegrid.ledger.v1 import ledger_pb2 as pb
from idlegrid.ledger.values import StoredTransfer, Transfer
from idlegrid.ledger.writer import BatchWriter

S = pb.OperationStatus
EARNINGS_BATCH_MAX = 1000


def release_id(job_id: bytes) -> bytes:
    return derive("earning-release", job_id)


def void_id(job_id: bytes) -> bytes:
    return derive("earning-void", job_id)


def refund_id(job_id: bytes) -> bytes:
    return derive("refund", job_id)


@dataclass(frozen=True, slots=True)
class _Held:
    """One job's held earning as the ledger stores it, and who paid for the job."""

    job_id: bytes
    earning: StoredTransfer
    consumer_account_id: bytes


def check_ids(ids: list[bytes], what: str, count_max: int = EARNINGS_BATCH_MAX) -> list[bytes]:
    """1..``count_max`` distinct ids of 16 non-zero bytes, else INVALID_ARGUMENT."""
    if not 1 <= len(ids) <= count_max:
        raise InvalidArgument(f"{what}s: between 1 and {count_max} items, got {len(ids)}")
    for j in ids:
        if len(j) != 16 or j == bytes(16):
            raise InvalidArgument(f"each {what} must be 16 non-zero bytes")
    if len(set(ids)) != len(ids):
        raise InvalidArgument(f"a {what} appears twice in one request")
    return ids


def held_status(results: list[int]) -> int:
    """The status of one held earning's (or aggregate's) release or void chain."""
    causes = [r for r in results if r != R.LINKED_EVENT_FAILED] or results
    if all(r == R.OK for r in causes):
        return S.OPERATION_STATUS_OK
    if all(r == R.EXISTS for r in causes):
        # A whole chain partly there already (another refund split) was rolled back.
        return S.OPERATION_STATUS_CONFLICT if R.LINKED_EVENT_FAILED in results else \
            S.OPERATION_STATUS_ALREADY_APPLIED
    for r in causes:
        if r in (R.PENDING_TRANSFER_ALREADY_POSTED, R.PENDING_TRANSFER_ALREADY_VOIDED):
            return S.OPERATION_STATUS_HOLD_ALREADY_RESOLVED
        if r == R.EXISTS_WITH_DIFFERENT_FIELDS:
            return S.OPERATION_STATUS_CONFLICT
    # Anything else is a broken invariant of the held earning (it cannot expire,
    # its accounts exist): refuse loudly rather than report a business answer.
    raise InvalidArgument(f"held earning refused: {[pb.CreateTransferResult.Name(r) for r in results]}")


async def resolve_held(writer: BatchWriter, keys: list[bytes], chains: dict[bytes, list[Transfer]],
                       amounts: dict[bytes, int], *, whole_chains: bool = False) -> list[Outcome]:
    """Submits the chain of each key that has one, in one group commit; one
    Outcome per key, in order (HOLD_NOT_FOUND for a key without a chain)."""
    transfers = [t for k in keys if k in chains for t in chains[k]]
    results = await writer.submit(transfers, whole_chains=whole_chains) if transfers else []
    out, i = [], 0
    for k in keys:
        chain = chains.get(k)
        if chain is None:
            out.append(Outcome(status=S.OPERATION_STATUS_HOLD_NOT_FOUND, transfer_ids=[], results=[]))
            continue
        res = results[i:i + len(chain)]
        i += len(chain)
        out.append(Outcome(status=held_status(res), transfer_ids=[t.id for t in chain], results=res,
                           amount=amounts[k], provider_amount=amounts[k]))
    return out


class Earnings:
    def __init__(self, writer: BatchWriter, pool: asyncpg.Pool) -> None:
        self._writer = writer
        self._pool = pool

    async def _held(self, job_ids: list[bytes]) -> dict[bytes, _Held]:
        """The jobs that have a held (pending) earning, with their payer."""
        found = await reads.transfers_by_id(
            self._pool, [earning_id(j) for j in job_ids] + [reserve_id(j) for j in job_ids])
        out = {}
        for j in job_ids:
            e, r = found.get(earning_id(j)), found.get(reserve_id(j))
            if e is not None and r is not None and e.flags & PENDING and e.code == CODE_EARNING:
                out[j] = _Held(j, e, r.debit_account_id)
        return out

    async def _run(self, job_ids: list[bytes], plan) -> list[Outcome]:
        held = await self._held(check_ids(job_ids, "job_id"))
        return await resolve_held(self._writer, job_ids, {j: plan(h) for j, h in held.items()},
                                  {j: h.earning.amount for j, h in held.items()})

    async def release(self, job_ids: list[bytes]) -> list[Outcome]:
        """Posts each job's held earning in full, in one group commit."""
        return await self._run(job_ids, lambda h: [
            Transfer(id=release_id(h.job_id), pending_id=h.earning.id, amount=h.earning.amount, flags=POST)])

    async def void(self, job_ids: list[bytes]) -> list[Outcome]:
        """Voids each job's held earning and refunds it to the job's payer,
        linked, in one group commit."""
        escrow = ESCROW

        def chain(h: _Held) -> list[Transfer]:
            return [Transfer(id=void_id(h.job_id), pending_id=h.earning.id, flags=VOID | LINKED),
                    Transfer(id=refund_id(h.job_id), debit_account_id=escrow,
                             credit_account_id=h.consumer_account_id, amount=h.earning.amount,
                             user_data=h.job_id, ledger=h.earning.ledger, code=CODE_REFUND)]

        return await self._run(job_ids, chain)
