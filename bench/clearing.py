"""``idlegrid bench clearing``: usage records driven through metering and
batched clearing on a real ledger (no Triton): the ledger and metering in
their own processes on a fresh embedded PostgreSQL, this process playing the
schedulers (OpenLease, RecordUsageBatch, CloseLease over gRPC).

Prints:
- ``jobs_settled_per_s``: jobs recorded and cleared per second, from the
  first record to the last lease's window applied on the ledger (target
  >= 20,000); ``record_per_s`` (the recording alone) and ``clear_tail_s``
  (from the last record to the last window applied) split it;
- ``ledger_ops_per_job``: ledger transfers per job (lease holds, lease
  posts, node aggregates, window fees, and one release per held aggregate,
  counted though the release comes after the hold window; target <= 0.05).

The client is not the bottleneck: records are built before the clock starts,
and CONCURRENCY callers send RecordUsageBatch (BATCH records each) and
CloseLease concurrently, so metering's writer always has calls queued to
group-commit (under py-spy the callers take well under 1% of this process's
time; the time goes to metering and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.bench.kit import free_port, report, spawn, wait_healthy
from idlegrid.common.channel import open_channel, with_token
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.ledger.v1 import ledger_pb2_grpc
from idlegrid.metering.v1 import metering_pb2 as pb
from idlegrid.metering.v1 import metering_pb2_grpc

TOKEN = "bench-token"
BATCH = 1000
CONSUMERS = 50
NODES = 20
CONCURRENCY = 8
PRICE_IN = 50_000  # µcr per million tokens: a 20-token job costs 1 µcr exactly
DMNEC = lpb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS


def _ts(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


def _records(lease: bytes, consumer: bytes, provider: bytes, n: int, seed: int) -> list[pb.UsageRecord]:
    now = _ts(datetime.now(UTC))
    out = []
    for i in range(n):
        tokens = 7 + (seed + i) % 50
        picos = PRICE_IN * tokens
        out.append(pb.UsageRecord(
            job_id=os.urandom(16), consumer_account_id=consumer, provider_account_id=provider, provider_id="p",
            node_id=f"{(seed + i) % NODES:032x}", model="m", prompt_tokens=tokens, node_prompt_tokens=tokens,
            duration_ms=1, price_input_per_mtok=PRICE_IN, cost_picos=picos, cost_micros=-(-picos // 10**6),
            outcome=pb.OUTCOME_COMPLETED, started_at=now, finished_at=now, lease_id=lease))
    return out


async def _setup(ledger) -> tuple[list[bytes], bytes]:
    consumers, provider = [os.urandom(16) for _ in range(CONSUMERS)], os.urandom(16)
    await ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[
        lpb.Account(id=c, ledger=1, kind=lpb.ACCOUNT_KIND_CONSUMER, flags=DMNEC) for c in consumers] + [
        lpb.Account(id=provider, ledger=1, kind=lpb.ACCOUNT_KIND_PROVIDER, flags=DMNEC)]))
    for c in consumers:
        await ledger.TopUp(lpb.TopUpRequest(account_id=c, amount=10**12, idempotency_key=c.hex()))
    return consumers, provider


async def _drive(meterings: list, consumers, provider, rounds: int, per_lease: int, conn) -> dict:
    until = _ts(datetime.now(UTC) + timedelta(minutes=30))
    replica = os.urandom(16)
    leases = [(os.urandom(16), c) for _ in range(rounds) for c in consumers]
    for k, (lid, c) in enumerate(leases):
        r = await meterings[k % len(meterings)].OpenLease(pb.OpenLeaseRequest(lease_id=lid, consumer_account_id=c, amount_min=1,
                                                         amount_max=10**9, use_until=until, max_job_s=60,
                                                         replica_id=replica))
        assert r.amount > 0, r
    # The schedulers' side (building records) is not metering's work: built before the clock starts.
    # A lease's calls go to one replica (a scheduler keeps its connection); leases alternate between them.
    plans = [(meterings[k % len(meterings)], lid,
              [pb.RecordUsageBatchRequest(records=recs[i:i + BATCH]) for i in range(0, per_lease, BATCH)])
             for k, (lid, c) in enumerate(leases) for recs in [_records(lid, c, provider, per_lease, k)]]
    queue = iter(plans)
    jobs = len(leases) * per_lease

    async def scheduler():
        for metering, lid, batches in queue:
            for b in batches:
                await metering.RecordUsageBatch(b)
            await metering.CloseLease(pb.CloseLeaseRequest(lease_id=lid, jobs=per_lease))

    t0 = time.perf_counter()
    await asyncio.gather(*(scheduler() for _ in range(CONCURRENCY)))
    t1 = time.perf_counter()
    ids = [lid for lid, _ in leases]
    uids = [uuid.UUID(bytes=x) for x in ids]
    while True:
        done = await conn.fetchval(
            """SELECT count(*) FROM metering.clearing_leases l JOIN metering.clearing_windows w USING (window_id)
                WHERE w.state = 2 AND l.lease_id = ANY($1::uuid[])""", uids)
        if done == len(ids):
            break
        await asyncio.sleep(0.02)  # polling the database: nothing to wait on in this process
    t2 = time.perf_counter()
    return {"jobs": jobs, "leases": len(ids), "record_s": t1 - t0, "total_s": t2 - t0, "clear_s": t2 - t1}


async def run(args, config) -> int:
    from idlegrid.cli.migrate import migrate_all
    from idlegrid.common import db

    rounds, per_lease = (2, 400) if args.quick else (4, 1000)
    home = Path(tempfile.mkdtemp(prefix="idlegrid-bench-clearing-"))
    db_url = await asyncio.to_thread(db.embedded_url, home)
    await migrate_all(db_url)
    replicas = max(1, getattr(args, "replicas", 1))
    ports = {n: free_port() for n in ("ledger", "metering", "registry")}
    env = {"IDLEGRID_HOME": str(home), "IDLEGRID_DATABASE_URL": db_url, "IDLEGRID_SERVICE_TOKEN": TOKEN,
           "IDLEGRID_LOG_LEVEL": "warning", "IDLEGRID_LOG_FORMAT": "json",
           **{f"IDLEGRID_{n.upper()}_PORT": str(p) for n, p in ports.items()},
           **{f"IDLEGRID_{n.upper()}_ADDR": f"127.0.0.1:{p}" for n, p in ports.items()}}
    procs = []
    conn = await asyncpg.connect(db_url)
    try:
        for name in ("ledger", "metering"):  # no registry: metering takes no node as suspended
            procs.append(spawn([name, "serve"], env=env, log_path=home / f"{name}.log"))
            await wait_healthy(f"127.0.0.1:{ports[name]}", proc=procs[-1], timeout_s=120)
        metering_ports = [ports["metering"]]
        for i in range(1, replicas):  # more metering replicas on the same database, as in production
            metering_ports.append(free_port())
            procs.append(spawn(["metering", "serve"], env={**env, "IDLEGRID_METERING_PORT": str(metering_ports[-1])},
                               log_path=home / f"metering-{i}.log"))
            await wait_healthy(f"127.0.0.1:{metering_ports[-1]}", proc=procs[-1], timeout_s=120)
        channels = [open_channel(f"127.0.0.1:{p}", token=None) for p in metering_ports]
        try:
            lch = open_channel(f"127.0.0.1:{ports['ledger']}", token=None)
            channels.append(lch)
            ledger = with_token(ledger_pb2_grpc.LedgerServiceStub(lch), TOKEN)
            meterings = [with_token(metering_pb2_grpc.MeteringServiceStub(ch), TOKEN) for ch in channels[:-1]]
            consumers, provider = await _setup(ledger)
            await _drive(meterings, consumers[:2 * replicas], provider, 1, 200, conn)  # warm-up
            before = await conn.fetchval("SELECT count(*) FROM ledger.transfers")
            aggs_before = await conn.fetchval("SELECT count(*) FROM metering.clearing_aggregates WHERE earning = 1")
            f = await _drive(meterings, consumers, provider, rounds, per_lease, conn)
            ops = await conn.fetchval("SELECT count(*) FROM ledger.transfers") - before
            releases = await conn.fetchval(
                "SELECT count(*) FROM metering.clearing_aggregates WHERE earning = 1") - aggs_before
            windows = await conn.fetchval("SELECT count(*) FROM metering.clearing_windows")
        finally:
            for ch in channels:
                await ch.close()
    finally:
        await conn.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    result = {
        "jobs_settled_per_s": round(f["jobs"] / f["total_s"]),
        "ledger_ops_per_job": round((ops + releases) / f["jobs"], 5),
        "record_per_s": round(f["jobs"] / f["record_s"]),
        "clear_tail_s": round(f["clear_s"], 3),
        "jobs": f["jobs"], "leases": f["leases"], "ledger_transfers": ops, "held_aggregates": releases,
        "windows_total": windows, "metering_replicas": replicas, "cpu_count": os.cpu_count(),
    }
    report("clearing bench (ledger + metering + embedded PostgreSQL on this machine, no Triton)", result,
           as_json=args.json)
    return 0
