"""OpenLease and CloseLease: a lease is recorded durably (OPENING) before the
ledger is asked for its hold, then marked OPEN with what the ledger granted,
or REFUSED. Every step is idempotent by lease id, so a retry after any crash
gives the same answer (the ledger's OpenLease is idempotent by lease id too)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import grpc
import structlog

from idlegrid.common.errors import Conflict, FailedPrecondition, Unavailable
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering import leases_store as store
from idlegrid.metering.leases import LeaseState, check_new, same, validate_close, validate_open
from idlegrid.metering.v1 import metering_pb2 as pb

log = structlog.get_logger("metering.leases")

LEDGER_TIMEOUT_S = 10.0
_S = lpb.OperationStatus
_BROKE = "insufficient funds"


def _answer(row) -> pb.OpenLeaseResponse:
    state = LeaseState(row["state"])
    if state == LeaseState.REFUSED:
        if row["note"] != _BROKE:
            raise FailedPrecondition(f"the ledger refused the lease ({row['note']}): open a new one")
        return pb.OpenLeaseResponse(amount=0, insufficient_funds=True, available=row["available"],
                                    held_elsewhere=row["held_elsewhere"])
    if state in (LeaseState.OPEN, LeaseState.CLOSED, LeaseState.CLEARED):
        return pb.OpenLeaseResponse(amount=row["amount"], available=row["available"],
                                    held_elsewhere=row["held_elsewhere"])
    raise FailedPrecondition(f"the lease is {state.name.lower()}: open a new one")


class LeaseDesk:
    def __init__(self, pool: asyncpg.Pool, ledger) -> None:
        self._pool = pool
        self._ledger = ledger  # LedgerServiceStub carrying metering's token
        self.ledger_calls = 0
        self._settling: set[asyncio.Task] = set()

    async def open(self, request: pb.OpenLeaseRequest) -> pb.OpenLeaseResponse:
        now = datetime.now(UTC)
        values = validate_open(request)
        async with self._pool.acquire() as conn:
            row, created = await store.create(conn, values) if await self._is_new(conn, values, now) else (
                await store.get(conn, values["lease_id"]), False)
        if not created and not same(row, values):
            raise Conflict("a different lease exists with this lease_id")
        if row["state"] != LeaseState.OPENING:
            return _answer(row)  # answered before: the same answer
        # Shielded: a scheduler that dies (its call cancelled) mid-way must not
        # leave a hold the ledger granted unrecorded until clearing's timeout.
        task = asyncio.create_task(self._settle(request, values))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return await asyncio.shield(task)

    async def _settle(self, request: pb.OpenLeaseRequest, values: dict) -> pb.OpenLeaseResponse:
        res = await self._hold(values)
        async with self._pool.acquire() as conn:
            if res.status in (_S.OPERATION_STATUS_OK, _S.OPERATION_STATUS_ALREADY_APPLIED):
                done = await store.opened(conn, values["lease_id"], res.amount, res.available, res.held_elsewhere)
            elif res.status == _S.OPERATION_STATUS_INSUFFICIENT_FUNDS:
                done = await store.refused(conn, values["lease_id"], res.available, res.held_elsewhere,
                                           _BROKE)
            else:  # the ledger applied nothing: CONFLICT (the id was used otherwise), or a bad request
                name = _S.Name(res.status) if res.status else "invalid request"
                done = await store.refused(conn, values["lease_id"], 0, 0, f"ledger: {name}")
                log.warning("lease.refused_by_ledger", lease_id=request.lease_id.hex(), status=name)
            row = done or await store.get(conn, values["lease_id"])  # a concurrent retry answered first
        return _answer(row)

    @staticmethod
    async def _is_new(conn, values: dict, now: datetime) -> bool:
        """A new lease's use_until is checked; a retry's is not (it may come late)."""
        if await store.get(conn, values["lease_id"]) is not None:
            return False
        check_new(values, now)
        return True

    async def _hold(self, values: dict) -> lpb.OpenLeaseResponse:
        self.ledger_calls += 1
        try:
            return await self._ledger.OpenLease(lpb.OpenLeaseRequest(
                lease_id=values["lease_id"].bytes, consumer_account_id=values["consumer_account_id"].bytes,
                amount_min=values["amount_min"], amount_max=values["amount_max"],
                user_data=values["replica_id"].bytes), timeout=LEDGER_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                log.warning("lease.ledger_refused", lease_id=values["lease_id"].hex, error=e.details())
                return lpb.OpenLeaseResponse()  # refused, nothing held (status UNSPECIFIED)
            # The lease stays OPENING: a retry with the same lease_id asks again (idempotent).
            raise Unavailable(f"ledger unavailable ({e.code().name}); retry with the same lease_id") from None

    async def close(self, request: pb.CloseLeaseRequest) -> None:
        lease_id, jobs = validate_close(request)
        async with self._pool.acquire() as conn:
            row = await store.get(conn, lease_id)
            if row is None:
                raise FailedPrecondition("no such lease")
            if row["state"] == LeaseState.OPEN:
                if await store.records(conn, lease_id) > jobs:
                    raise FailedPrecondition("the lease has more usage records than jobs")
                row = await store.close(conn, lease_id, jobs) or await store.get(conn, lease_id)
            if row["state"] in (LeaseState.CLOSED, LeaseState.CLEARED) and row["jobs"] is not None:
                if row["jobs"] != jobs:
                    raise Conflict("the lease was closed with another job count")
                return
            raise FailedPrecondition(f"the lease is {LeaseState(row['state']).name.lower()}, not open")
