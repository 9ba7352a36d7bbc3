"""gRPC servicer of metering."""

from __future__ import annotations

import base64
import struct

import asyncpg
from asyncpg.pgproto import pgproto

from idlegrid.common.errors import Conflict, InvalidArgument, NotFound
from idlegrid.common.paging import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX
from idlegrid.metering import store, usage
from idlegrid.metering.settlement import SettlementWorker
from idlegrid.metering.states import Settlement
from idlegrid.metering.v1 import metering_pb2 as pb
from idlegrid.metering.v1 import metering_pb2_grpc

BUCKETS_MAX = 10_000
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
    def __init__(self, pool: asyncpg.Pool, worker: SettlementWorker, *, fee_bps: int) -> None:
        self._pool = pool
        self._worker = worker
        self._fee_bps = fee_bps

    async def RecordUsage(self, request, context):
        values = usage.validate(request.record, self._fee_bps)
        row, created = await store.insert(self._pool, values, Settlement.PENDING)
        if not created and not usage.same(row, values):
            raise Conflict("a different usage record exists for this job")
        if created:
            self._worker.wake()
        return pb.RecordUsageResponse(created=created, record=usage.to_pb(row))

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
