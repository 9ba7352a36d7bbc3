"""The earnings worker: releases held earnings after their window, and voids
(with a refund to the partner who paid) every held earning of a node whose
earnings are voided, in batches of one ledger call each.

Each pass:
1. records in metering.earning_voids each suspension the registry reports
   that began or ended since the last pass (through now: the jobs recorded
   up to then stay covered after the node is unsuspended, or a restart);
2. voids the held earnings of nodes suspended now (every one) or covered by
   a mark (VoidEarnings: void + refund, linked);
3. releases the held earnings due, of nodes neither suspended nor marked
   (ReleaseEarnings), once the registry's view has arrived.
Per-job earnings (records without a lease) and clearing aggregates (one per
node and window, idlegrid.metering.earnings_aggregates) alike.

Rows are claimed with FOR UPDATE SKIP LOCKED for the length of the ledger
call, so replicas never send the same earning twice at once; the ledger's
ids derive from the job id, so a crash between the ledger and the row only
leads to a retry that answers ALREADY_APPLIED; and the ledger lets a held
earning end once, released or voided, never both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import grpc
import structlog

from idlegrid.common.workers import PassWorker
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering import earning_states
from idlegrid.metering import earnings_aggregates as aggregates
from idlegrid.metering import earnings_store as store
from idlegrid.metering.earning_states import Earning, proven_by_ledger
from idlegrid.metering.settings import MeteringSettings
from idlegrid.metering.suspensions import Suspensions

log = structlog.get_logger("metering.earnings")

LEDGER_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Pass:
    """What one batch did: earnings ended (jobs, micro-credits) and whether
    the batch was full (more may be waiting)."""

    voided: int = 0
    voided_micros: int = 0
    released: int = 0
    full: bool = False
    failed: bool = False  # the ledger did not answer: the rows stay HELD


class EarningsWorker(PassWorker):
    name = "metering-earnings"

    def __init__(self, pool: asyncpg.Pool, ledger, settings: MeteringSettings, suspensions: Suspensions) -> None:
        self._pool = pool
        self._ledger = ledger  # LedgerServiceStub carrying metering's token
        self._settings = settings
        self._suspensions = suspensions
        super().__init__(settings.earnings_poll_ms / 1000)
        # One pass or one operator's void at a time in this process: a void_node's
        # answer then counts every earning its mark voids, never a worker's race.
        self._lock = asyncio.Lock()
        self._marked: dict[str, str] = {}  # the suspensions recorded in earning_voids by this process
        self.released = 0
        self.voided = 0

    async def run_once(self) -> bool:
        """One pass (marks, voids, releases); returns whether more may be waiting."""
        async with self._lock:
            return await self._pass()

    async def _pass(self) -> bool:
        suspended = self._suspensions.suspended()
        await self._mark(suspended)
        voids = await self.void_batch(suspended=suspended)
        busy = voids.full and not voids.failed
        agg = await self.void_aggregates(suspended=suspended)
        busy = busy or (agg.full and not agg.failed)
        if self._suspensions.synced:
            releases = await self._release_batch(list(suspended))
            busy = busy or (releases.full and not releases.failed)
            limit = self._settings.earnings_batch_max
            async with self._pool.acquire() as conn, conn.transaction():
                n, full, failed = await aggregates.release(conn, self._ledger, limit, list(suspended))
            self.released += n
            busy = busy or (full and not failed)
        return busy

    async def void_aggregates(self, *, suspended: dict[str, str] | None = None, node_id: str | None = None) -> Pass:
        """Voids and refunds one batch of held clearing aggregates (see
        idlegrid.metering.earnings_aggregates); ``voided``: their jobs."""
        async with self._pool.acquire() as conn, conn.transaction():
            n, jobs, micros, full, failed = await aggregates.void(
                conn, self._ledger, self._settings.earnings_batch_max, suspended=suspended or {}, node_id=node_id)
        self.voided += jobs
        return Pass(voided=jobs, voided_micros=micros, full=full, failed=failed)

    async def _mark(self, suspended: dict[str, str]) -> None:
        """Records the suspensions that began or ended since the last pass
        (through now), so that the jobs recorded meanwhile stay covered
        after the node is unsuspended, or metering restarted."""
        changed = {n: r for n, r in suspended.items() if self._marked.get(n) != r}
        changed.update({n: r for n, r in self._marked.items() if n not in suspended})
        if changed:
            async with self._pool.acquire() as conn:
                await store.mark_voided(conn, list(changed), list(changed.values()), "registry")
        self._marked = dict(suspended)

    async def void_batch(self, *, suspended: dict[str, str] | None = None, node_id: str | None = None) -> Pass:
        """Voids and refunds one batch of held earnings of nodes marked void
        or ``suspended`` now (of ``node_id`` only, when given)."""
        limit = self._settings.earnings_batch_max
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await store.claim_voids(conn, limit, suspended=suspended, node_id=node_id)
            if not rows:
                return Pass()
            res = await self._call(self._ledger.VoidEarnings, rows)
            if res is None:
                return Pass(full=len(rows) == limit, failed=True)
            done = await self._resolve(conn, rows, res, Earning.VOIDED, [r["reason"] for r in rows])
        voided = [r for r, s in zip(rows, done, strict=True) if s == Earning.VOIDED]
        self.voided += len(voided)
        if voided:
            log.info("earnings.voided", jobs=len(voided), micros=sum(r["provider_micros"] for r in voided))
        return Pass(voided=len(voided), voided_micros=sum(r["provider_micros"] for r in voided),
                    full=len(rows) == limit)

    async def _release_batch(self, suspended: list[str]) -> Pass:
        limit = self._settings.earnings_batch_max
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await store.claim_releases(conn, limit, suspended)
            if not rows:
                return Pass()
            res = await self._call(self._ledger.ReleaseEarnings, rows)
            if res is None:
                return Pass(full=len(rows) == limit, failed=True)
            done = await self._resolve(conn, rows, res, Earning.RELEASED, [""] * len(rows))
        released = sum(s == Earning.RELEASED for s in done)
        self.released += released
        return Pass(released=released, full=len(rows) == limit)

    async def _call(self, method, rows) -> list[lpb.OperationResponse] | None:
        try:
            r = await method(lpb.EarningsRequest(job_ids=[x["job_id"].bytes for x in rows]),
                             timeout=LEDGER_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            log.warning("earnings.ledger_unavailable", code=e.code().name, details=e.details())
            return None
        return list(r.results)

    @staticmethod
    async def _resolve(conn, rows, results: list[lpb.OperationResponse], wanted: Earning,
                       notes: list[str]) -> list[Earning | None]:
        """Records what the ledger answered; a row it did not end stays HELD."""
        out = [proven_by_ledger(x, wanted) for x in results]
        ended = [(r["job_id"], s, n) for r, s, n in zip(rows, out, notes, strict=True) if s is not None]
        for r, x, s in zip(rows, results, out, strict=True):
            if s is None:
                log.error("earnings.not_ended", job_id=r["job_id"].hex, status=lpb.OperationStatus.Name(x.status))
            else:
                earning_states.check(Earning.HELD, s)
        if ended:
            await store.resolve(conn, [e[0] for e in ended], [e[1] for e in ended],
                                [e[2] if e[1] == Earning.VOIDED else "" for e in ended])
        return out

    async def void_node(self, node_id: str, reason: str) -> tuple[int, int, int]:
        """An operator's decision: (jobs voided, micro-credits refunded, jobs
        still held because the ledger did not answer; the worker retries).
        Under the worker's lock: the mark and its voids are one step, so the
        answer counts each earning the mark ended (the worker's next pass
        finds them VOIDED already)."""
        async with self._lock:
            return await self._void_node(node_id, reason)

    async def _void_node(self, node_id: str, reason: str) -> tuple[int, int, int]:
        async with self._pool.acquire() as conn:
            await store.mark_voided(conn, [node_id], [reason], "operator")
        jobs = micros = pending = 0
        for batch in (self.void_batch, self.void_aggregates):
            while True:
                p = await batch(node_id=node_id)
                jobs, micros = jobs + p.voided, micros + p.voided_micros
                if p.failed or not p.full:
                    break
            if p.failed:
                pending += (await store.void_pending(self._pool, node_id) if batch == self.void_batch else
                            await aggregates.pending(self._pool, node_id))
        return jobs, micros, pending
