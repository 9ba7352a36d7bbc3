"""The clearing worker: every window, the leases ready to clear (closed, or
their scheduler gone: see idlegrid.metering.leases) are settled in ONE
ledger call (ClearWindow): each lease posted for the exact charge of its
records (0: voided), each node's earnings as one aggregate (held for the
release window), one fee; each transfer carries the Merkle root of exactly
its records (idlegrid.metering.clearing_rules).

Exactly once, across crashes and replicas:
1. store: in one transaction, the leases are claimed, their records locked,
   and the window (ids derived from its leases and nodes), its lease
   charges, its aggregates and each record's window and aggregate stored
   (state STORED), the leases ended in metering.leases;
2. send: ClearWindow, idempotent by window id (ALREADY_APPLIED is success);
3. mark the window CLEARED.
A crash between 1 and 3 leaves a STORED window, which the next pass (of any
replica) sends again, the same. One replica clears at a time (a Postgres
advisory lock held for the pass). A lease the ledger may never have held
(stuck OPENING) is voided if the ledger has it, else REFUSED: every lease
metering recorded ends, so a hold never needs a ledger expiry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import grpc
import structlog

from idlegrid.common.clearing import root_prefix
from idlegrid.common.config import env_int
from idlegrid.common.workers import PassWorker
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering import clearing_rules, leases_store
from idlegrid.metering import clearing_store as store
from idlegrid.metering.clearing_rules import WindowPlan
from idlegrid.metering.earning_states import Earning

log = structlog.get_logger("metering.clearing")

LOCK_KEY = 0x1D1E_C1EA  # the advisory lock of the clearing pass
LEDGER_TIMEOUT_S = 30.0
LEASES_MAX = 4_000  # ClearWindow's maximum of leases (and of aggregates)
LEASE_SLACK_S, OPENING_S = int(leases_store.SLACK_S), int(leases_store.OPENING_S)  # the defaults
OPENING_MIN_S = 15  # more than leases_desk.LEDGER_TIMEOUT_S: an OpenLease in flight is never cleared under it
OPENING, REFUSED, CLEARED, VOIDED = 1, 5, 4, 6
_S = lpb.OperationStatus
_DONE = (_S.OPERATION_STATUS_OK, _S.OPERATION_STATUS_ALREADY_APPLIED)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClearingSettings:
    """IDLEGRID_CLEARING_WINDOW_MS (default 1000): how often a window is
    cleared. IDLEGRID_CLEARING_LEASE_SLACK_S (default 30): how long after a
    lease's last use (use_until + its longest job) its scheduler's records
    may still land, before an expired lease is cleared without them.
    IDLEGRID_CLEARING_OPENING_S (default 60, at least 15: longer than
    metering's ledger call to open a lease): how long a lease may stay
    OPENING before it is settled as held or refused."""

    window_ms: int = 1_000
    leases_max: int = LEASES_MAX
    lease_slack_s: int = LEASE_SLACK_S
    opening_s: int = OPENING_S

    @classmethod
    def from_env(cls, env=None) -> ClearingSettings:
        env = os.environ if env is None else env
        return cls(window_ms=env_int(env, "IDLEGRID_CLEARING_WINDOW_MS", 1_000, lo=10, hi=600_000),
                   lease_slack_s=env_int(env, "IDLEGRID_CLEARING_LEASE_SLACK_S", LEASE_SLACK_S, lo=1,
                                         hi=3_600),
                   opening_s=env_int(env, "IDLEGRID_CLEARING_OPENING_S", OPENING_S,
                                     lo=OPENING_MIN_S, hi=3_600))


class ClearingWorker(PassWorker):
    name = "metering-clearing"

    def __init__(self, pool: asyncpg.Pool, ledger, *, hold_s: int,
                 settings: ClearingSettings | None = None) -> None:
        self._pool = pool
        self._ledger = ledger  # LedgerServiceStub carrying metering's token
        self._hold_s = hold_s
        self._settings = settings or ClearingSettings.from_env()
        super().__init__(self._settings.window_ms / 1000)
        self.windows = 0
        self.jobs = 0

    async def run_once(self) -> bool:
        """One pass: sends the windows stored but not cleared, then stores and
        sends the next; returns whether more may be ready."""
        async with self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                return False  # another replica is clearing
            try:
                for wid in await store.stored_windows(conn, 64):
                    if not await self.send(conn, wid):
                        return False  # the ledger is unavailable: try again next window
                p = await self.store_next(conn)
                if p is None:
                    return False
                await self.send(conn, p.window_id)
                return len(p.leases) >= self._settings.leases_max
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)

    async def store_next(self, conn) -> WindowPlan | None:
        """Step 1: the next window stored (None: no lease is ready)."""
        async with conn.transaction():
            ready = await leases_store.leases_to_clear(conn, datetime.now(UTC), limit=self._settings.leases_max,
                                                       opening_s=self._settings.opening_s,
                                                       slack_s=self._settings.lease_slack_s)
            ready = await store.lock_leases(conn, ready)
            if not ready:
                return None
            held = await self._ledger_amounts([r["lease_id"].bytes for r in ready if r["state"] == OPENING])
            gone = [r for r in ready if r["state"] == OPENING and r["lease_id"].bytes not in held]
            take = [r for r in ready if r not in gone]
            if gone:
                await store.end_leases(conn, [r["lease_id"].bytes for r in gone], [REFUSED] * len(gone),
                                       [0] * len(gone))
            if not take:
                return None
            ids = [r["lease_id"].bytes for r in take]
            records = await store.records_of(conn, ids)
            p = clearing_rules.plan([(r["lease_id"].bytes, r["consumer_account_id"].bytes) for r in take], records)
            await store.store_window(conn, p, self._hold_s)
            await store.end_leases(conn, [lp.lease_id for lp in p.leases],
                                   [CLEARED if lp.charged else VOIDED for lp in p.leases],
                                   [held.get(lp.lease_id, 0) for lp in p.leases])
        return p

    async def _ledger_amounts(self, lease_ids: list[bytes]) -> dict[bytes, int]:
        """The leases the ledger holds among ``lease_ids`` (stuck OPENING):
        lease id -> amount. Raises when the ledger cannot say."""
        if not lease_ids:
            return {}
        res = await self._ledger.LookupTransfers(lpb.LookupTransfersRequest(ids=lease_ids),
                                                 timeout=LEDGER_TIMEOUT_S)
        return {t.id: t.amount for t in res.transfers}

    async def send(self, conn, wid: bytes) -> bool:
        """Steps 2 and 3 for a stored window; False when the ledger did not
        apply it (it stays STORED and is sent again)."""
        req, jobs = await window_request(conn, wid)
        try:
            res = await self._ledger.ClearWindow(req, timeout=LEDGER_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            log.warning("clearing.ledger_unavailable", window_id=wid.hex(), code=e.code().name,
                        details=e.details())
            return False
        if res.status not in _DONE:
            log.error("clearing.refused", window_id=wid.hex(), status=_S.Name(res.status),
                      results=[lpb.CreateTransferResult.Name(x) for x in res.results][:8])
            return False
        await store.mark_cleared(conn, wid)
        self.windows += 1
        self.jobs += jobs
        return True





async def window_request(conn, wid: bytes) -> tuple[lpb.ClearWindowRequest, int]:
    """The ledger call of a stored window, rebuilt from its rows (the same
    every time), and its jobs."""
    w, lease_rows, agg_rows = await store.window_parts(conn, wid)
    return lpb.ClearWindowRequest(
        window_id=wid, fee=w["fee_micros"], fee_root_prefix=root_prefix(bytes(w["root"])),
        leases=[lpb.LeaseCharge(lease_id=r["lease_id"].bytes, amount=r["charged_micros"],
                                root_prefix=root_prefix(bytes(r["root"]))) for r in lease_rows],
        aggregates=[lpb.NodeAggregate(aggregate_id=r["aggregate_id"].bytes,
                                      provider_account_id=r["provider_account_id"].bytes,
                                      amount=r["amount_micros"], root_prefix=root_prefix(bytes(r["root"])),
                                      hold=r["earning"] != int(Earning.POSTED)) for r in agg_rows]), w["jobs"]
