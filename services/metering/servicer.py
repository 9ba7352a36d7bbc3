"""gRPC servicer of metering."""

from __future__ import annotations

import base64
import struct

import asyncpg
import structlog
from asyncpg.pgproto import pgproto

from idlegrid.common.errors import Conflict, InvalidArgument, NotFound
from idlegrid.common.paging import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX
from idlegrid.metering import earnings_store, earnings_views, store, usage
from idlegrid.metering.earnings import EarningsWorker
from idlegrid.metering.leases_desk import LeaseDesk
from idlegrid.metering.usage_writer import UsageWriter
from idlegrid.metering.v1 import metering_pb2 as pb
from idlegrid.metering.v1 import metering_pb2_grpc

log = structlog.get_logger("metering.servicer")

BUCKETS_MAX = 10_000
BATCH_RECORDS_MAX = 1_000
TEXT_LEN_MAX = 1024  # check details and void reasons
BUCKET_S_MIN, BUCKET_S_MAX, BUCKET_S_DEFAULT = 60, 2_592_000, 3600
_UTC = __import__("datetime").UTC


def _filter(f: pb.UsageFilter) -> dict:
    out: dict = {}
    for name in ("consumer_account_id", "provider_account_id"):
        v = getattr(f, name)
        if v:
            if len(v) != 16:
                raise InvalidArgument(f"filter.{name} must be 16 bytes")
            out[name] = pgproto.UUID(v)
    for name in ("node_id", "model"):
        v = getattr(f, name)
        if v:
            if len(v) > usage.NAME_LEN_MAX:
                raise InvalidArgument(f"filter.{name} is too long")
            out[name] = v
    if f.earning:
        if f.earning not in pb.EarningState.values():
            raise InvalidArgument("filter.earning is unknown")
        out["earning"] = f.earning
    if f.HasField("since"):
        out["since"] = f.since.ToDatetime(tzinfo=_UTC)
    if f.HasField("until"):
        out["until"] = f.until.ToDatetime(tzinfo=_UTC)
    return out


def _token(row) -> str:
    dt = row["finished_at"]
    us = int(dt.timestamp()) * 1_000_000 + dt.microsecond
    return base64.urlsafe_b64encode(struct.pack(">q", us) + row["job_id"].bytes).decode()


def _after(token: str):
    try:
        raw = base64.urlsafe_b64decode(token.encode())
        (us,) = struct.unpack(">q", raw[:8])
        job = raw[8:]
        if len(job) != 16:
            raise ValueError
    except (ValueError, struct.error):
        raise InvalidArgument("page_token is malformed") from None
    import datetime

    return (datetime.datetime.fromtimestamp(us // 1_000_000, tz=_UTC).replace(microsecond=us % 1_000_000),
            pgproto.UUID(job))


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(self, pool: asyncpg.Pool, writer: UsageWriter, desk: LeaseDesk, earnings: EarningsWorker, *,
                 fee_bps: int, earnings_hold_s: int) -> None:
        self._pool = pool
        self._writer = writer
        self._desk = desk
        self._earnings = earnings
        self._fee_bps = fee_bps
        self._hold_s = earnings_hold_s

    async def RecordUsage(self, request, context):
        values = usage.validate(request.record, self._fee_bps, self._hold_s)
        ((row, created),) = await self._writer.record([values], whole_rows=True)
        return pb.RecordUsageResponse(created=created, record=usage.to_pb(row))

    async def RecordUsageBatch(self, request, context):
        rows = usage.validate_batch(request.records, self._fee_bps, self._hold_s, BATCH_RECORDS_MAX)
        return pb.RecordUsageBatchResponse(created=await self._writer.record(rows))

    async def OpenLease(self, request, context):
        return await self._desk.open(request)

    async def CloseLease(self, request, context):
        await self._desk.close(request)
        return pb.CloseLeaseResponse()

    async def GetJob(self, request, context):
        if len(request.job_id) != 16:
            raise InvalidArgument("job_id must be 16 bytes")
        row = await store.get(self._pool, pgproto.UUID(request.job_id))
        if row is None:
            raise NotFound("no usage recorded for this job")
        return usage.to_pb(row)

    async def ListUsage(self, request, context):
        limit = request.limit or PAGE_SIZE_DEFAULT
        if limit > PAGE_SIZE_MAX:
            raise InvalidArgument(f"limit must be at most {PAGE_SIZE_MAX}")
        after = _after(request.page_token) if request.page_token else None
        rows = await store.page(self._pool, _filter(request.filter), limit + 1, after)
        more = len(rows) > limit
        rows = rows[:limit]
        return pb.ListUsageResponse(records=[usage.to_pb(r) for r in rows],
                                    next_page_token=_token(rows[-1]) if more else "")

    async def GetUsage(self, request, context):
        bucket_s = request.bucket_s or BUCKET_S_DEFAULT
        if not BUCKET_S_MIN <= bucket_s <= BUCKET_S_MAX:
            raise InvalidArgument(f"bucket_s must be in [{BUCKET_S_MIN}, {BUCKET_S_MAX}]")
        group = {pb.GROUP_BY_NONE: None, pb.GROUP_BY_NODE: "node_id", pb.GROUP_BY_MODEL: "model"}.get(request.group_by)
        if request.group_by not in (pb.GROUP_BY_NONE, pb.GROUP_BY_NODE, pb.GROUP_BY_MODEL):
            raise InvalidArgument("group_by is unknown")
        rows = await store.buckets(self._pool, _filter(request.filter), bucket_s, group, BUCKETS_MAX)
        out = []
        for r in rows:
            b = pb.UsageBucket(key=r["key"], **{k: int(r[k] or 0) for k in (
                "jobs", "prompt_tokens", "completion_tokens", "requests", "cost_micros", "fee_micros",
                "provider_micros", "settled_cost_micros")})
            b.start.FromDatetime(r["start"])
            out.append(b)
        return pb.GetUsageResponse(buckets=out)

    async def GetEarnings(self, request, context):
        if len(request.provider_account_id) != 16:
            raise InvalidArgument("provider_account_id must be 16 bytes")
        total, by_node = await earnings_store.summary(self._pool, pgproto.UUID(request.provider_account_id),
                                                      earnings_views.NODES_MAX)
        return earnings_views.response(total, by_node)

    async def RecordCheckResult(self, request, context):
        if len(request.job_id) != 16:
            raise InvalidArgument("job_id must be 16 bytes")
        if len(request.detail) > TEXT_LEN_MAX:
            raise InvalidArgument(f"detail is longer than {TEXT_LEN_MAX} characters")
        result = pb.CHECK_RESULT_PASSED if request.passed else pb.CHECK_RESULT_FAILED
        row, changed = await earnings_store.record_check(self._pool, pgproto.UUID(request.job_id), result,
                                                         request.detail)
        if row is None:
            raise NotFound("no usage recorded for this job")
        if not changed and row["check_result"] != result:
            raise Conflict("a different check result is recorded for this job")
        return pb.RecordCheckResultResponse(changed=changed, record=usage.to_pb(row))

    async def VoidNodeEarnings(self, request, context):
        if not 1 <= len(request.node_id) <= usage.NAME_LEN_MAX:
            raise InvalidArgument(f"node_id must be 1..{usage.NAME_LEN_MAX} characters")
        if not 1 <= len(request.reason) <= TEXT_LEN_MAX:
            raise InvalidArgument(f"reason must be 1..{TEXT_LEN_MAX} characters")
        jobs, micros, pending = await self._earnings.void_node(request.node_id, request.reason)
        log.info("earnings.node_voided", node_id=request.node_id, reason=request.reason, jobs=jobs,
                 micros=micros, pending=pending)
        return pb.VoidNodeEarningsResponse(jobs_voided=jobs, refunded_micros=micros, jobs_pending=pending)
