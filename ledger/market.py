"""Marketplace operations on the ledger primitives (see the money-flow table
in ARCHITECTURE.md). Every transfer id is derived from the job id or the
idempotency key, so a retried operation changes nothing.

| operation | transfers (debit -> credit) |
|---|---|
| top-up  | external:deposits -> consumer |
| reserve | pending consumer -> escrow:jobs, timeout |
| settle  | linked: post the hold for the cost; escrow -> provider (cost - fee, pending while held); escrow -> platform:revenue (fee) |
| release | void the hold |
| payout  | provider -> external:payouts |

A held earning (``hold_earning``) is a pending transfer without a timeout;
``idlegrid.ledger.earnings`` releases it or voids and refunds it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from idlegrid.common.errors import InvalidArgument, NotFound
from idlegrid.common.money import AMOUNT_MAX, split_fee
from idlegrid.ledger.codes import (
    CODE_EARNING,
    CODE_FEE,
    CODE_PAYOUT,
    CODE_RESERVE,
    CODE_TOPUP,
    LEDGER_CREDITS,
    LINKED,
    PENDING,
    POST,
    VOID,
    R,
)
from idlegrid.ledger.ids import derive, well_known_account
from idlegrid.ledger.v1 import ledger_pb2 as pb
from idlegrid.ledger.values import Transfer
from idlegrid.ledger.writer import BatchWriter

S = pb.OperationStatus
TIMEOUT_S_MAX = 86_400
KEY_LEN_MAX = 128
FEE_BPS_MAX = 10_000
SETTLE_BATCH_MAX = 1000


@dataclass(frozen=True, slots=True)
class Settlement:
    """One job to settle: ``cost`` (0: release the reservation) split between
    the provider and the platform's fee of ``fee_bps`` basis points."""

    job_id: bytes
    provider_account_id: bytes = b""
    cost: int = 0
    fee_bps: int = 0
    hold_earning: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an operation did: its status (an OperationStatus), the transfers
    it sent with one result each, and the amounts it moved."""

    status: int
    transfer_ids: list[bytes]
    results: list[int]
    amount: int = 0
    fee: int = 0
    provider_amount: int = 0


def reserve_id(job_id: bytes) -> bytes:
    return derive("reserve", job_id)


def earning_id(job_id: bytes) -> bytes:
    """The job's earning transfer (escrow:jobs -> provider), pending while held."""
    return derive("earning", job_id)


def _id16(b: bytes, what: str) -> bytes:
    if len(b) != 16 or b == bytes(16):
        raise InvalidArgument(f"{what} must be 16 non-zero bytes")
    return b


def _amount(a: int, what: str) -> int:
    if not 0 < a <= AMOUNT_MAX:
        raise InvalidArgument(f"{what} must be in [1, {AMOUNT_MAX}] micro-credits, got {a}")
    return a


def _key(k: str) -> str:
    if not 1 <= len(k) <= KEY_LEN_MAX:
        raise InvalidArgument(f"idempotency_key must be 1..{KEY_LEN_MAX} characters")
    return k


_NOT_FOUND = {
    R.DEBIT_ACCOUNT_NOT_FOUND: "debit account not found",
    R.CREDIT_ACCOUNT_NOT_FOUND: "credit account not found",
}


def status_of(results: list[int], *, funds: bool = False, expired: bool = False) -> int:
    """Maps the per-transfer results of one operation to its status.
    ``funds`` / ``expired``: an ID_ALREADY_FAILED (a retry of a refused
    request) means INSUFFICIENT_FUNDS / HOLD_EXPIRED, as the first answer did."""
    if all(r == R.OK for r in results):
        return S.OPERATION_STATUS_OK
    if all(r == R.EXISTS for r in results):
        return S.OPERATION_STATUS_ALREADY_APPLIED
    for r in results:
        if r in _NOT_FOUND:
            raise NotFound(_NOT_FOUND[r])
        if r in (R.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER, R.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS):
            raise InvalidArgument("accounts are on different ledgers")
        if r in (R.EXCEEDS_CREDITS, R.ID_ALREADY_FAILED) and funds:
            return S.OPERATION_STATUS_INSUFFICIENT_FUNDS
        if r == R.EXCEEDS_CREDITS:
            return S.OPERATION_STATUS_INSUFFICIENT_FUNDS
        if r == R.ID_ALREADY_FAILED and expired:
            return S.OPERATION_STATUS_HOLD_EXPIRED
        if r == R.EXISTS_WITH_DIFFERENT_FIELDS:
            return S.OPERATION_STATUS_CONFLICT
        if r == R.PENDING_TRANSFER_EXPIRED:
            return S.OPERATION_STATUS_HOLD_EXPIRED
        if r in (R.PENDING_TRANSFER_ALREADY_POSTED, R.PENDING_TRANSFER_ALREADY_VOIDED):
            return S.OPERATION_STATUS_HOLD_ALREADY_RESOLVED
        if r == R.PENDING_TRANSFER_NOT_FOUND:
            return S.OPERATION_STATUS_HOLD_NOT_FOUND
        if r == R.EXCEEDS_PENDING_TRANSFER_AMOUNT:
            return S.OPERATION_STATUS_EXCEEDS_RESERVATION
        if r in (R.OVERFLOWS_CREDITS, R.OVERFLOWS_DEBITS):
            raise InvalidArgument("amount overflows a balance")
    raise InvalidArgument(f"operation refused: {[pb.CreateTransferResult.Name(r) for r in results]}")


class Market:
    def __init__(self, writer: BatchWriter) -> None:
        self._writer = writer

    async def _run(self, transfers: list[Transfer], *, funds: bool = False, expired: bool = False,
                   amount: int = 0) -> Outcome:
        results = await self._writer.submit(transfers)
        return Outcome(status=status_of(results, funds=funds, expired=expired),
                       transfer_ids=[t.id for t in transfers], results=results, amount=amount)

    async def top_up(self, *, account_id: bytes, amount: int, idempotency_key: str, ledger: int = 0) -> Outcome:
        """external:deposits -> the account. ``ledger`` 0: the credits ledger."""
        ledger = ledger or LEDGER_CREDITS
        t = Transfer(id=derive("topup", _key(idempotency_key)),
              debit_account_id=well_known_account("external:deposits", ledger),
              credit_account_id=_id16(account_id, "account_id"),
              amount=_amount(amount, "amount"), ledger=ledger, code=CODE_TOPUP)
        return await self._run([t], amount=amount)

    async def reserve(self, *, job_id: bytes, consumer_account_id: bytes, amount: int, timeout_s: int,
                      ledger: int = 0) -> Outcome:
        """A hold of ``amount`` on the consumer for the job, released after ``timeout_s``."""
        ledger = ledger or LEDGER_CREDITS
        job = _id16(job_id, "job_id")
        if not 1 <= timeout_s <= TIMEOUT_S_MAX:
            raise InvalidArgument(f"timeout_s must be in [1, {TIMEOUT_S_MAX}]")
        t = Transfer(id=reserve_id(job), debit_account_id=_id16(consumer_account_id, "consumer_account_id"),
              credit_account_id=well_known_account("escrow:jobs", ledger),
              amount=_amount(amount, "amount"), user_data=job, timeout_s=timeout_s,
              ledger=ledger, code=CODE_RESERVE, flags=PENDING)
        return await self._run([t], funds=True, amount=amount)

    @staticmethod
    def _settle_plan(s: Settlement) -> tuple[list[Transfer], int, int, int]:
        """The transfers that settle one job: (chain, cost, fee, provider_amount).
        Cost 0 is a release (one void)."""
        job = _id16(s.job_id, "job_id")
        if s.fee_bps > FEE_BPS_MAX:
            raise InvalidArgument(f"fee_bps must be in [0, {FEE_BPS_MAX}]")
        if s.cost == 0:
            return [Transfer(id=derive("release", job), pending_id=reserve_id(job), flags=VOID)], 0, 0, 0
        provider = _id16(s.provider_account_id, "provider_account_id")
        cost = _amount(s.cost, "cost")
        provider_amount, fee = split_fee(cost, s.fee_bps)
        ledger = LEDGER_CREDITS
        escrow = well_known_account("escrow:jobs", ledger)
        chain = [Transfer(id=derive("settle", job), pending_id=reserve_id(job), amount=cost, flags=POST | LINKED)]
        if provider_amount:
            chain.append(Transfer(id=earning_id(job), debit_account_id=escrow, credit_account_id=provider,
                           amount=provider_amount, user_data=job, ledger=ledger, code=CODE_EARNING,
                           flags=LINKED | (PENDING if s.hold_earning else 0)))
        if fee:
            chain.append(Transfer(id=derive("fee", job), debit_account_id=escrow,
                           credit_account_id=well_known_account("platform:revenue", ledger),
                           amount=fee, user_data=job, ledger=ledger, code=CODE_FEE, flags=LINKED))
        chain[-1] = replace(chain[-1], flags=chain[-1].flags & ~LINKED)
        return chain, cost, fee, provider_amount

    @staticmethod
    def _settle_outcome(chain: list[Transfer], results: list[int], cost: int, fee: int,
                        provider_amount: int) -> Outcome:
        # The chain fails as a whole: report the cause, not LINKED_EVENT_FAILED.
        causes = [r for r in results if r != R.LINKED_EVENT_FAILED] or results
        # A post's or void's id is burned only by an expired hold: a retry is HOLD_EXPIRED again.
        expired = results[0] == R.ID_ALREADY_FAILED
        return Outcome(status=status_of(causes, expired=expired), transfer_ids=[t.id for t in chain],
                       results=results, amount=cost, fee=fee, provider_amount=provider_amount)

    async def settle(self, s: Settlement) -> Outcome:
        """Posts the job's hold for its cost and pays the provider and the fee, all or nothing."""
        plan = self._settle_plan(s)
        return self._settle_outcome(plan[0], await self._writer.submit(plan[0]), *plan[1:])

    async def settle_batch(self, settlements: list[Settlement]) -> list[Outcome]:
        """Many jobs' settlements in one writer request (one group commit),
        each job's chain succeeding or failing on its own."""
        if not 1 <= len(settlements) <= SETTLE_BATCH_MAX:
            raise InvalidArgument(f"settles: between 1 and {SETTLE_BATCH_MAX} items")
        if len({s.job_id for s in settlements}) != len(settlements):
            raise InvalidArgument("a job appears twice in one batch")
        plans = [self._settle_plan(s) for s in settlements]
        results = await self._writer.submit([t for chain, *_ in plans for t in chain])
        out, i = [], 0
        for chain, cost, fee, provider_amount in plans:
            out.append(self._settle_outcome(chain, results[i:i + len(chain)], cost, fee, provider_amount))
            i += len(chain)
        return out

    async def release(self, *, job_id: bytes) -> Outcome:
        """Voids the job's hold: the consumer gets the whole reservation back."""
        job = _id16(job_id, "job_id")
        t = Transfer(id=derive("release", job), pending_id=reserve_id(job), flags=VOID)
        return await self._run([t], expired=True)  # a void's id is burned only by an expired hold

    async def payout(self, *, provider_account_id: bytes, amount: int, idempotency_key: str,
                     ledger: int = 0) -> Outcome:
        """The provider -> external:payouts."""
        ledger = ledger or LEDGER_CREDITS
        t = Transfer(id=derive("payout", _key(idempotency_key)),
              debit_account_id=_id16(provider_account_id, "provider_account_id"),
              credit_account_id=well_known_account("external:payouts", ledger),
              amount=_amount(amount, "amount"), ledger=ledger, code=CODE_PAYOUT)
        return await self._run([t], funds=True, amount=amount)
