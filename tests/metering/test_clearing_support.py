"""Shared by the clearing tests (no tests here): leases opened, usage recorded
and closed through metering as a scheduler does, and waits for clearing."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.metering.v1 import metering_pb2 as pb
from tests.harness import eventually

REPLICA = os.urandom(16)


def _ts(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


async def open_lease(metering, consumer: bytes, amount: int) -> bytes:
    lease = os.urandom(16)
    r = await metering.OpenLease(pb.OpenLeaseRequest(
        lease_id=lease, consumer_account_id=consumer, amount_min=1, amount_max=amount,
        use_until=_ts(datetime.now(UTC) + timedelta(seconds=60)), max_job_s=60, replica_id=REPLICA))
    assert r.amount == amount, r
    return lease


def record(lease: bytes, consumer: bytes, provider: bytes, node_id: str, cost_picos: int, *,
           prompt_tokens: int = 10, completion_tokens: int = 0) -> pb.UsageRecord:
    now = _ts(datetime.now(UTC))
    return pb.UsageRecord(
        job_id=os.urandom(16), consumer_account_id=consumer, provider_account_id=provider, provider_id="p",
        node_id=node_id, model="m", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        node_prompt_tokens=prompt_tokens, node_completion_tokens=completion_tokens, duration_ms=1,
        price_input_per_mtok=cost_picos // max(prompt_tokens, 1), cost_picos=cost_picos,
        cost_micros=-(-cost_picos // 10**6), outcome=pb.OUTCOME_COMPLETED, started_at=now, finished_at=now,
        lease_id=lease)


async def run_lease(metering, lease: bytes, records: list[pb.UsageRecord]) -> None:
    """Records the lease's jobs (in batches) and closes it."""
    for i in range(0, len(records), 1000):
        await metering.RecordUsageBatch(pb.RecordUsageBatchRequest(records=records[i:i + 1000]))
    await metering.CloseLease(pb.CloseLeaseRequest(lease_id=lease, jobs=len(records)))


async def cleared(db_url: str, leases: list[bytes]) -> None:
    """Waits until each lease is in a window the ledger applied."""
    conn = await asyncpg.connect(db_url)
    try:
        async def done() -> bool:
            n = await conn.fetchval(
                """SELECT count(*) FROM metering.clearing_leases l JOIN metering.clearing_windows w
                     USING (window_id) WHERE w.state = 2 AND l.lease_id = ANY($1::uuid[])""",
                [uuid.UUID(bytes=x) for x in leases])
            return n == len(leases)

        await eventually(done, what="the leases' clearing")
    finally:
        await conn.close()
