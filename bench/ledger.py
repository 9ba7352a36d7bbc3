"""``idlegrid bench ledger``: the ledger service in its own process on a fresh
embedded PostgreSQL, driven over gRPC from this process.

Prints transfers/s for (a) the batch API with batches of 1,000 and (b)
single-transfer RPCs from 64 concurrent clients, each with 50 accounts, 10
accounts (contention) and one hot credit account; plus reserve+settle pairs/s;
plus credit leases opened/s (OpenLease from 64 clients) and ClearWindow
transfers/s (windows of WINDOW_LEASES lease posts + as many node aggregates +
a fee, each window one commit).
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from pathlib import Path

from idlegrid.bench.kit import free_port, report, spawn, wait_healthy
from idlegrid.common.channel import open_channel, with_token
from idlegrid.ledger.codes import LEDGER_CREDITS, R
from idlegrid.ledger.v1 import ledger_pb2 as pb
from idlegrid.ledger.v1 import ledger_pb2_grpc

BATCH = 1000
CLIENTS = 64
WINDOW_LEASES = 2000


def _accounts(n: int) -> list[bytes]:
    return [os.urandom(16) for _ in range(n)]


async def _create_accounts(stub, ids: list[bytes], kind=pb.ACCOUNT_KIND_CONSUMER) -> None:
    res = await stub.CreateAccounts(pb.CreateAccountsRequest(accounts=[
        pb.Account(id=i, ledger=LEDGER_CREDITS, kind=kind) for i in ids]))
    assert all(r == 0 for r in res.results), res.results


def _transfer(dr: bytes, cr: bytes, amount: int = 1) -> pb.Transfer:
    return pb.Transfer(id=os.urandom(16), debit_account_id=dr, credit_account_id=cr, amount=amount,
                       ledger=LEDGER_CREDITS, code=1)


def _pairs(accts: list[bytes], hot: bytes | None, n: int, rnd: random.Random):
    out = []
    for _ in range(n):
        if hot is not None:
            out.append((rnd.choice(accts), hot))
        else:
            a, b = rnd.sample(accts, 2)
            out.append((a, b))
    return out


async def _batch_case(stub, accts, hot, total: int, concurrency: int = 4) -> float:
    rnd = random.Random(1)
    batches = [[_transfer(a, b) for a, b in _pairs(accts, hot, BATCH, rnd)] for _ in range(total // BATCH)]
    reqs = [pb.CreateTransfersRequest(transfers=b) for b in batches]
    it = iter(reqs)

    async def worker():
        for req in it:
            res = await stub.CreateTransfers(req)
            assert not any(res.results), "batch transfer failed"

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(reqs) * BATCH / (time.perf_counter() - t0)


async def _single_case(stub, accts, hot, total: int) -> float:
    rnd = random.Random(2)
    reqs = [pb.CreateTransfersRequest(transfers=[_transfer(a, b)]) for a, b in _pairs(accts, hot, total, rnd)]
    it = iter(reqs)

    async def client():
        for req in it:
            res = await stub.CreateTransfers(req)
            assert res.results[0] == R.OK, res.results

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return total / (time.perf_counter() - t0)


async def _reserve_settle(stub, consumers, provider, pairs: int) -> float:
    jobs = [os.urandom(16) for _ in range(pairs)]
    it = iter(enumerate(jobs))

    async def client():
        for i, job in it:
            r = await stub.Reserve(pb.ReserveRequest(job_id=job, consumer_account_id=consumers[i % len(consumers)],
                                                     amount=1000, timeout_s=300))
            assert r.status == pb.OPERATION_STATUS_OK, r
            s = await stub.Settle(pb.SettleRequest(job_id=job, provider_account_id=provider, cost=700, fee_bps=1000))
            assert s.status == pb.OPERATION_STATUS_OK, s

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return pairs / (time.perf_counter() - t0)


async def _leases_and_windows(stub, consumers, providers, windows: int) -> tuple[float, float]:
    """(lease opens/s, ClearWindow transfers/s)."""
    leases = [os.urandom(16) for _ in range(windows * WINDOW_LEASES)]
    it = iter(enumerate(leases))

    async def client():
        for i, lid in it:
            r = await stub.OpenLease(pb.OpenLeaseRequest(lease_id=lid, consumer_account_id=consumers[i % len(consumers)],
                                                         amount_min=1, amount_max=1000))
            assert r.status == pb.OPERATION_STATUS_OK, r

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    opens = len(leases) / (time.perf_counter() - t0)
    reqs = []
    for w in range(windows):
        chunk = leases[w * WINDOW_LEASES:(w + 1) * WINDOW_LEASES]
        reqs.append(pb.ClearWindowRequest(
            window_id=os.urandom(16), fee=len(chunk) * 100, fee_root_prefix=os.urandom(16),
            leases=[pb.LeaseCharge(lease_id=lid, amount=700, root_prefix=os.urandom(16)) for lid in chunk],
            aggregates=[pb.NodeAggregate(aggregate_id=os.urandom(16), provider_account_id=providers[i % len(providers)],
                                         amount=600, root_prefix=os.urandom(16), hold=i % 2 == 0)
                        for i in range(len(chunk))]))
    t0 = time.perf_counter()
    for req in reqs:  # one window after another, as one clearing worker sends them
        r = await stub.ClearWindow(req)
        assert r.status == pb.OPERATION_STATUS_OK, r.status
    return opens, windows * (2 * WINDOW_LEASES + 1) / (time.perf_counter() - t0)


async def run(args, config) -> int:
    quick = args.quick
    n_batch = 20_000 if quick else 100_000
    n_single = 4_000 if quick else 30_000
    n_pairs = 2_000 if quick else 10_000
    home = Path(tempfile.mkdtemp(prefix="idlegrid-bench-"))
    port = free_port()
    env = {"IDLEGRID_HOME": str(home), "IDLEGRID_LEDGER_PORT": str(port), "IDLEGRID_LOG_LEVEL": "warning",
           "IDLEGRID_LOG_FORMAT": "json", "IDLEGRID_SERVICE_TOKEN": "bench-token"}
    env.pop("IDLEGRID_DATABASE_URL", None)
    os.environ.pop("IDLEGRID_DATABASE_URL", None)
    proc = spawn(["ledger", "serve"], env=env, log_path=home / "ledger.log")
    figures: dict[str, float] = {}
    try:
        addr = f"127.0.0.1:{port}"
        await wait_healthy(addr, proc=proc, timeout_s=120)
        async with open_channel(addr, token=None) as ch:
            stub = with_token(ledger_pb2_grpc.LedgerServiceStub(ch), "bench-token")
            a50, a10, hot = _accounts(50), _accounts(10), os.urandom(16)
            await _create_accounts(stub, a50 + a10)
            await _create_accounts(stub, [hot], pb.ACCOUNT_KIND_PROVIDER)
            await _batch_case(stub, a50, None, 2 * BATCH)  # warm-up
            await _single_case(stub, a50, None, 500)
            for label, accts, h in (("50", a50, None), ("10", a10, None), ("hot", a50, hot)):
                figures[f"batch_{label}"] = await _batch_case(stub, accts, h, n_batch)
                figures[f"single_{label}"] = await _single_case(stub, accts, h, n_single)
            consumers = _accounts(50)
            await _create_accounts(stub, consumers)
            for c in consumers:
                await stub.TopUp(pb.TopUpRequest(account_id=c, amount=10**12, idempotency_key=c.hex()))
            figures["pairs"] = await _reserve_settle(stub, consumers, hot, n_pairs)
            providers = _accounts(20)
            await _create_accounts(stub, providers, pb.ACCOUNT_KIND_PROVIDER)
            figures["lease_opens"], figures["window"] = await _leases_and_windows(
                stub, consumers, providers, 2 if quick else 5)
    finally:
        proc.terminate()
        proc.wait(30)
    result = {
        "batch_transfers_per_s": round(figures["batch_50"]),
        "single_transfers_per_s": round(figures["single_50"]),
        "batch_transfers_per_s_10_accounts": round(figures["batch_10"]),
        "single_transfers_per_s_10_accounts": round(figures["single_10"]),
        "batch_transfers_per_s_hot_account": round(figures["batch_hot"]),
        "single_transfers_per_s_hot_account": round(figures["single_hot"]),
        "reserve_settle_pairs_per_s": round(figures["pairs"]),
        "lease_opens_per_s": round(figures["lease_opens"]),
        "clear_window_transfers_per_s": round(figures["window"]),
        "clear_window_transfers": 2 * WINDOW_LEASES + 1,
        "batch_size": BATCH, "single_clients": CLIENTS, "cpu_count": os.cpu_count(),
    }
    report("ledger bench (service + client + embedded PostgreSQL on this machine)", result, as_json=args.json)
    return 0
