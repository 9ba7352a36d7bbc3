"""``idlegrid bench dispatch``: the latency the scheduler path adds over a
direct ``tritonclient`` call to the same Triton model, and requests/s at
concurrency 32, with reservation and settlement on.

Everything runs on this machine: PostgreSQL (embedded), the ledger, metering,
registry, relay, scheduler and the node agent each in its own process, a
demo Triton serving the ``echo`` model, and the clients in this process."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as tc
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
from idlegrid.common.channel import open_channel, with_token
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.ledger.v1 import ledger_pb2_grpc
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.registry.v1 import registry_pb2_grpc
from idlegrid.scheduler.v1 import scheduler_pb2 as spb
from idlegrid.scheduler.v1 import scheduler_pb2_grpc

CONCURRENCY = 32
TOKEN = "bench-token"


async def start_services(home: Path, names: list[str]) -> tuple[dict[str, str], list]:
    """Starts each service as its own process on free ports; returns addresses."""
    ports = {n: free_port() for n in ("ledger", "metering", "registry", "relay", "scheduler", "gateway")}
    env = {"IDLEGRID_HOME": str(home), "IDLEGRID_SERVICE_TOKEN": TOKEN, "IDLEGRID_LOG_LEVEL": "warning",
           "IDLEGRID_LOG_FORMAT": "json"}
    for n, p in ports.items():
        env[f"IDLEGRID_{n.upper()}_PORT"] = str(p)
        env[f"IDLEGRID_{n.upper()}_ADDR"] = f"127.0.0.1:{p}"
    procs = []
    for name in names:
        proc = spawn([name, "serve"], env=env, log_path=home / f"{name}.log")
        procs.append(proc)
        if name != "gateway":
            await wait_healthy(f"127.0.0.1:{ports[name]}", proc=proc, timeout_s=120)
        if name == "registry":  # nodes offer only catalog models
            from idlegrid.cli.demo_catalog import seed_at

            await seed_at(f"127.0.0.1:{ports[name]}", token=TOKEN, actor="bench", cache_dir=home)
    return {n: f"127.0.0.1:{p}" for n, p in ports.items()}, procs


async def demo_node_options(addrs: dict[str, str], triton, models: tuple[str, ...]):
    """A provider account and a registry provider; returns the options of a
    node agent for ``triton`` that joins as that provider."""
    from idlegrid.cli import demo_node
    from idlegrid.node.agent import AgentOptions

    async with open_channel(addrs["ledger"], token=TOKEN) as lch, open_channel(addrs["registry"], token=TOKEN) as rch:
        ledger = ledger_pb2_grpc.LedgerServiceStub(lch)
        provider = os.urandom(16)
        await ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[lpb.Account(
            id=provider, ledger=1, kind=lpb.ACCOUNT_KIND_PROVIDER,
            flags=lpb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS)]))
        prov = await registry_pb2_grpc.RegistryServiceStub(rch).CreateProvider(
            rpb.CreateProviderRequest(name=f"bench-{provider.hex()[:8]}", ledger_account_id=provider))
    cfg = await asyncio.to_thread(demo_node.node_config)
    import dataclasses

    cfg = dataclasses.replace(cfg, models={k: v for k, v in cfg.models.items() if k in models})
    return AgentOptions(registry_addr=addrs["registry"], provider_token=prov.provider_token,
                        triton_url=triton.grpc_url, metrics_url=triton.metrics_url, node_config=cfg,
                        relay_addrs=(addrs["relay"],))


async def new_consumer(ledger_addr: str, credits: int) -> bytes:
    async with open_channel(ledger_addr, token=TOKEN) as ch:
        ledger = ledger_pb2_grpc.LedgerServiceStub(ch)
        acct = os.urandom(16)
        await ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[lpb.Account(
            id=acct, ledger=1, kind=lpb.ACCOUNT_KIND_CONSUMER,
            flags=lpb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS)]))
        await ledger.TopUp(lpb.TopUpRequest(account_id=acct, amount=credits, idempotency_key=acct.hex()))
        return acct


async def run(args, config) -> int:
    from idlegrid.demo import start_demo_triton

    n_lat, n_rps = (200, 1000) if args.quick else (1000, 5000)
    home = Path(tempfile.mkdtemp(prefix="idlegrid-bench-dispatch-"))
    os.environ.pop("IDLEGRID_DATABASE_URL", None)
    triton = await asyncio.to_thread(start_demo_triton, models=("echo",))
    procs: list = []
    try:
        addrs, procs = await start_services(home, ["ledger", "metering", "registry", "relay", "scheduler"])
        options = await demo_node_options(addrs, triton, ("echo",))
        async with agent_process(options, log_path=home / "agent.log"):
            d_lat, s_lat, d_rps, s_rps = await _measure(addrs, triton, n_lat, n_rps)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(30)
        await asyncio.to_thread(triton.stop)
    (dp50, dp99), (sp50, sp99) = p50_p99_ms(d_lat), p50_p99_ms(s_lat)
    result = {
        "added_p50_ms": round(sp50 - dp50, 3), "added_p99_ms": round(sp99 - dp99, 3),
        "rps_ratio": round(s_rps / d_rps, 3),
        "direct_p50_ms": round(dp50, 3), "direct_p99_ms": round(dp99, 3),
        "scheduler_p50_ms": round(sp50, 3), "scheduler_p99_ms": round(sp99, 3),
        "direct_rps": round(d_rps), "scheduler_rps": round(s_rps), "concurrency": CONCURRENCY,
        "requests_latency": n_lat, "requests_throughput": n_rps, "model": "echo",
    }
    report("dispatch bench (scheduler path with reservation and settlement vs direct tritonclient)", result,
           as_json=args.json)
    return 0


async def _measure(addrs: dict[str, str], triton, n_lat: int, n_rps: int):
    """Latencies and requests/s, direct to Triton and through the scheduler."""
    consumer = await new_consumer(addrs["ledger"], 10**12)
    data = np.asarray([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    direct = tc.InferenceServerClient(url=triton.grpc_url)
    inp = InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)

    async def call_direct():
        await direct.infer("echo", [inp])

    async with open_channel(addrs["scheduler"], token=None) as ch:
        sched = with_token(scheduler_pb2_grpc.SchedulerServiceStub(ch), TOKEN)
        tensor = spb.Tensor(name="INPUT0", datatype="FP32", shape=list(data.shape), contents=data.tobytes())

        async def call_scheduler():
            await sched.Infer(spb.InferRequest(
                job_id=os.urandom(16), consumer_account_id=consumer, model="echo",
                tensors=spb.TensorInput(inputs=[tensor])))

        for fn in (call_direct, call_scheduler):  # warm-up: connections, caches
            await latencies_ms(fn, 50)
        d_lat = await latencies_ms(call_direct, n_lat)
        s_lat = await latencies_ms(call_scheduler, n_lat)
        d_rps = await throughput(call_direct, n_rps, concurrency=CONCURRENCY)
        s_rps = await throughput(call_scheduler, n_rps, concurrency=CONCURRENCY)
    await direct.close()
    return d_lat, s_lat, d_rps, s_rps
