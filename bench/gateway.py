"""``idlegrid bench gateway``: what the gateway path costs over calling
Triton directly.

The whole stack runs on this machine on a fresh embedded PostgreSQL: ledger,
metering, registry, scheduler and gateway each in its own process (as in
production), the demo Triton serving the ``echo`` model, and a node agent
that registers it (its own process too, as on a provider's machine). The
same small tensor request is then sent

- directly to Triton with ``tritonclient.grpc.aio`` (the baseline), and
- to the scheduler's gRPC Infer (ledger hold, Triton, metering record), and
- through the gateway's REST ``/v2/models/echo/infer`` (auth, rate limit,
  then the scheduler's path),

first one at a time (latency: p50, p99) and then from 32 concurrent clients
(requests/s). ``--json`` prints one object with ``added_p50_ms``,
``added_p99_ms`` and ``rps_ratio`` (gateway requests/s over direct).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import InferInput

from idlegrid.bench.kit import (
    agent_process,
    free_port,
    latencies_ms,
    p50_p99_ms,
    report,
    spawn,
    throughput,
    wait_healthy,
)
from idlegrid.common.channel import open_channel
from idlegrid.scheduler.v1 import scheduler_pb2 as spb
from idlegrid.scheduler.v1 import scheduler_pb2_grpc

CONCURRENCY = 32
TOKEN = "bench-token"
SHAPE = [1, 16]
CREDITS = 10**12  # the per-call top-up cap


async def _wait_http(url: str, proc, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as s:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {proc.returncode}")
            try:
                async with s.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway did not start")
            await asyncio.sleep(0.1)


async def _setup_accounts(url: str, admin_key: str) -> tuple[str, str, bytes]:
    """(provider token, consumer key, consumer account), made through the admin API."""
    h = {"authorization": f"Bearer {admin_key}"}
    async with aiohttp.ClientSession(base_url=url, headers=h) as s:
        async with s.post("/v1/admin/accounts", json={"kind": "provider", "name": "bench-provider"}) as r:
            assert r.status == 201, await r.text()
            token = (await r.json())["provider_token"]
        async with s.post("/v1/admin/accounts", json={"kind": "consumer", "name": "bench-consumer"}) as r:
            assert r.status == 201, await r.text()
            account = (await r.json())["account_id"]
        async with s.post(f"/v1/admin/accounts/{account}/topup",
                          json={"amount_micros": CREDITS, "idempotency_key": "bench"}) as r:
            assert r.status == 200, await r.text()
        async with s.post("/v1/admin/keys", json={"account_id": account, "scope": "consumer"}) as r:
            assert r.status == 201, await r.text()
            return token, (await r.json())["key"], uuid.UUID(account).bytes


async def _wait_model(url: str, key: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {key}"}) as s:
        while time.monotonic() < deadline:
            async with s.get(url + "/v1/models") as r:
                if r.status == 200 and any(m["id"] == "echo" for m in (await r.json())["data"]):
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError("the gateway never listed the echo model")


async def _measure(url: str, key: str, triton_url: str, scheduler, account: bytes, n_latency: int,
                   n_rps: int) -> dict:
    x = np.arange(SHAPE[1], dtype=np.float32).reshape(SHAPE)
    direct = grpcclient.InferenceServerClient(triton_url)
    inp = InferInput("INPUT0", SHAPE, "FP32")
    inp.set_data_from_numpy(x)
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": SHAPE, "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    errors = 0
    conn = aiohttp.TCPConnector(limit=CONCURRENCY * 2)
    session = aiohttp.ClientSession(connector=conn, headers={"authorization": f"Bearer {key}",
                                                             "content-type": "application/json"})

    async def via_triton():
        await direct.infer("echo", [inp])

    tensor = spb.Tensor(name="INPUT0", datatype="FP32", shape=SHAPE, contents=x.tobytes())

    async def via_scheduler():
        await scheduler.Infer(spb.InferRequest(job_id=uuid.uuid4().bytes, consumer_account_id=account, model="echo",
                                               tensors=spb.TensorInput(inputs=[tensor])), timeout=60)

    async def via_gateway():
        nonlocal errors
        async with session.post(url + "/v2/models/echo/infer", data=body) as r:
            await r.read()
            errors += r.status != 200

    try:
        for call in (via_triton, via_scheduler, via_gateway):  # warm up connections and caches
            await latencies_ms(call, 50)
        d_lat = await latencies_ms(via_triton, n_latency)
        s_lat = await latencies_ms(via_scheduler, n_latency)
        g_lat = await latencies_ms(via_gateway, n_latency)
        d_rps = await throughput(via_triton, n_rps, concurrency=CONCURRENCY)
        s_rps = await throughput(via_scheduler, n_rps, concurrency=CONCURRENCY)
        g_rps = await throughput(via_gateway, n_rps, concurrency=CONCURRENCY)
    finally:
        await session.close()
        await direct.close()
    (d50, d99), (s50, s99), (g50, g99) = p50_p99_ms(d_lat), p50_p99_ms(s_lat), p50_p99_ms(g_lat)
    return {
        "added_p50_ms": round(g50 - d50, 3), "added_p99_ms": round(g99 - d99, 3),
        "rps_ratio": round(g_rps / d_rps, 4),
        "direct_p50_ms": round(d50, 3), "direct_p99_ms": round(d99, 3),
        "gateway_p50_ms": round(g50, 3), "gateway_p99_ms": round(g99, 3),
        # The scheduler's gRPC Infer without the gateway: what the REST edge itself adds is the rest.
        "scheduler_p50_ms": round(s50, 3), "scheduler_p99_ms": round(s99, 3), "scheduler_rps": round(s_rps),
        "direct_rps": round(d_rps), "gateway_rps": round(g_rps), "concurrency": CONCURRENCY,
        "latency_requests": n_latency, "throughput_requests": n_rps, "gateway_errors": errors,
        "cpu_count": os.cpu_count(),
    }


async def run(args, config) -> int:
    from idlegrid.common import db
    from idlegrid.demo import start_demo_triton
    from idlegrid.gateway.keys import create_key
    from idlegrid.node.agent import AgentOptions
    from idlegrid.node.config_file import ModelPricing, NodeConfig

    n_latency, n_rps = (300, 2000) if args.quick else (2000, 10000)
    home = Path(tempfile.mkdtemp(prefix="idlegrid-bench-gateway-"))
    os.environ.pop("IDLEGRID_DATABASE_URL", None)
    db_url = await asyncio.to_thread(db.embedded_url, home)  # this process keeps it running
    ports = {name: free_port() for name in ("ledger", "registry", "relay", "scheduler", "metering", "gateway")}
    env = {"IDLEGRID_HOME": str(home), "IDLEGRID_DATABASE_URL": db_url, "IDLEGRID_SERVICE_TOKEN": TOKEN,
           "IDLEGRID_LOG_LEVEL": "warning", "IDLEGRID_LOG_FORMAT": "json",
           **{f"IDLEGRID_{n.upper()}_PORT": str(p) for n, p in ports.items()},
           **{f"IDLEGRID_{n.upper()}_ADDR": f"127.0.0.1:{p}" for n, p in ports.items()}}
    procs, triton, pool = [], None, None
    triton_start = asyncio.create_task(asyncio.to_thread(start_demo_triton, models=("echo",)))
    try:
        procs.append(spawn(["ledger", "serve"], env=env, log_path=home / "ledger.log"))
        await wait_healthy(f"127.0.0.1:{ports['ledger']}", proc=procs[-1], timeout_s=120)
        backends = ("metering", "registry", "relay", "scheduler")
        for name in backends:
            procs.append(spawn([name, "serve"], env=env, log_path=home / f"{name}.log"))
        for name, proc in zip(backends, procs[1:], strict=True):
            await wait_healthy(f"127.0.0.1:{ports[name]}", proc=proc, timeout_s=120)
        from idlegrid.cli.demo_catalog import seed_at

        await seed_at(f"127.0.0.1:{ports['registry']}", token=TOKEN, actor="bench", cache_dir=home)  # the catalog
        procs.append(spawn(["gateway", "serve"], env=env, log_path=home / "gateway.log"))
        url = f"http://127.0.0.1:{ports['gateway']}"
        await _wait_http(url, procs[-1])
        pool = await db.create_pool(db_url, max_size=1)
        _, admin_key = await create_key(pool, scope="admin")
        provider_token, key, account = await _setup_accounts(url, admin_key)
        triton = await triton_start
        options = AgentOptions(
            registry_addr=f"127.0.0.1:{ports['registry']}", provider_token=provider_token,
            triton_url=triton.grpc_url, metrics_url=triton.metrics_url, relay_addrs=(f"127.0.0.1:{ports['relay']}",),
            node_config=NodeConfig(models={"echo": ModelPricing(name="echo", kind="tensor", price_per_request=1)}))
        async with agent_process(options, log_path=home / "agent.log"):
            await _wait_model(url, key)
            async with open_channel(f"127.0.0.1:{ports['scheduler']}", token=TOKEN) as ch:
                result = await _measure(url, key, triton.grpc_url, scheduler_pb2_grpc.SchedulerServiceStub(ch),
                                        account, n_latency, n_rps)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(30)
            except Exception:  # noqa: BLE001 - kill what does not stop
                p.kill()
        if triton is None and not triton_start.done():
            triton_start.cancel()
        if triton is not None:
            await asyncio.to_thread(triton.stop)
        if pool is not None:
            await pool.close()
    report("gateway bench: REST /v2 echo through the whole stack vs tritonclient.grpc direct", result,
           as_json=args.json)
    return 0
