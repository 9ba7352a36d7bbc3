"""The settlement worker (outbox pattern). Every usage record is queued in the
same write that stores it; this worker settles each on the ledger and marks it
done (the provider's share HELD for the record's release window, see
idlegrid.metering.earnings). The ledger operations are idempotent by job id, so a crash anywhere
(after the ledger applied a settlement but before it was marked) only leads to
a retry that answers ALREADY_APPLIED: every job is settled exactly once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import grpc
import structlog

from idlegrid.common.workers import PassWorker
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering import earning_states, states, store
from idlegrid.metering.earning_states import Earning
from idlegrid.metering.states import Settlement

log = structlog.get_logger("metering.settlement")

CLAIM_MAX = 256
POLL_S = 1.0
LEDGER_TIMEOUT_S = 10.0
BACKOFF_S_MAX = 60.0

_S = lpb.OperationStatus
# Ledger outcome -> (settlement state, error) for final answers.
_FINAL = {
    _S.OPERATION_STATUS_HOLD_EXPIRED: (Settlement.EXPIRED, "the reservation expired before settlement"),
    _S.OPERATION_STATUS_HOLD_NOT_FOUND: (Settlement.REJECTED, "no reservation for this job"),
    _S.OPERATION_STATUS_HOLD_ALREADY_RESOLVED: (Settlement.REJECTED, "the reservation was resolved otherwise"),
    _S.OPERATION_STATUS_CONFLICT: (Settlement.REJECTED, "the job was settled with other amounts"),
    _S.OPERATION_STATUS_EXCEEDS_RESERVATION: (Settlement.REJECTED, "the cost exceeds the reservation"),
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one record after asking the ledger: move it to a
    final ``state``, or keep it PENDING and ``retry`` later."""

    state: Settlement
    fee_micros: int = 0
    provider_micros: int = 0
    error: str = ""

    @property
    def retry(self) -> bool:
        return self.state == Settlement.PENDING


def _retry(error: str) -> Verdict:
    return Verdict(Settlement.PENDING, error=error)


class SettlementWorker(PassWorker):
    name = "metering-settlement"

    def __init__(self, pool: asyncpg.Pool, ledger, *, poll_s: float = POLL_S) -> None:
        self._pool = pool
        self._ledger = ledger  # LedgerServiceStub carrying the service token
        super().__init__(poll_s)
        self.settled = 0

    async def run_once(self) -> bool:
        """Settles what is due; returns whether there may be more."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await store.claim(conn, CLAIM_MAX)
            if not rows:
                return False
            outcomes = await self._settle_batch(rows)
            for r, v in zip(rows, outcomes, strict=True):
                states.check(Settlement.PENDING, v.state, cost_micros=r["cost_micros"])
                if v.retry:
                    delay = min(BACKOFF_S_MAX, 0.5 * 2 ** min(r["attempts"], 8))
                    await store.retry_later(conn, r["job_id"], delay, v.error)
                else:
                    earning = (earning_states.at_settlement(v.provider_micros, r["earnings_hold_s"])
                               if v.state == Settlement.SETTLED else Earning.NONE)
                    earning_states.check(Earning.NONE, earning)
                    await store.finish(conn, r["job_id"], v.state, v.fee_micros, v.provider_micros, v.error,
                                       earning)
                    self.settled += 1
        return len(rows) == CLAIM_MAX

    @staticmethod
    def _request(r) -> lpb.SettleRequest:
        """Cost 0 settles as a release of the job's hold. The provider's share
        is held on the ledger when the record's release window is not 0."""
        provider = r["provider_account_id"]
        return lpb.SettleRequest(job_id=r["job_id"].bytes, provider_account_id=provider.bytes if provider else b"",
                                 cost=r["cost_micros"], fee_bps=r["fee_bps"],
                                 hold_earning=r["earnings_hold_s"] > 0 and r["cost_micros"] > 0)

    async def _settle_batch(self, rows) -> list[Verdict]:
        """One ledger call for every row (one group commit); rows are settled
        one by one only if the batch is refused as a whole."""
        try:
            res = await self._ledger.SettleBatch(lpb.SettleBatchRequest(settles=[self._request(r) for r in rows]),
                                                 timeout=LEDGER_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                return list(await asyncio.gather(*(self._settle(r) for r in rows)))  # find the bad one
            return [_retry(f"ledger unavailable: {e.code().name}")] * len(rows)
        return [self._outcome(r, x) for r, x in zip(rows, res.results, strict=True)]

    async def _settle(self, r) -> Verdict:
        job = r["job_id"].bytes
        try:
            res = await self._ledger.Settle(self._request(r), timeout=LEDGER_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                log.error("settlement.rejected", job_id=job.hex(), error=e.details())
                return Verdict(Settlement.REJECTED, error=e.details() or "rejected")
            return _retry(f"ledger unavailable: {e.code().name}")
        return self._outcome(r, res)

    @staticmethod
    def _outcome(r, res: lpb.OperationResponse) -> Verdict:
        job = r["job_id"].bytes
        if res.status in (_S.OPERATION_STATUS_OK, _S.OPERATION_STATUS_ALREADY_APPLIED):
            if r["cost_micros"] == 0:
                return Verdict(Settlement.RELEASED)
            return Verdict(Settlement.SETTLED, res.fee, res.provider_amount)
        if r["cost_micros"] == 0 and res.status == _S.OPERATION_STATUS_HOLD_EXPIRED:
            return Verdict(Settlement.RELEASED)  # released by expiry: same effect
        state, error = _FINAL.get(res.status, (Settlement.REJECTED, "refused by the ledger"))
        log.warning("settlement.final_without_charge", job_id=job.hex(),
                    status=lpb.OperationStatus.Name(res.status))
        return Verdict(state, error=error)
