"""``idlegrid bench hops``: what a bare grpc-aio process in the path costs,
the floor under the relay's and the scheduler's figures.

The demo Triton's ``echo`` model is called with ``tritonclient`` directly, and
through chains of 1, 2 and 3 pass-through proxies. Each proxy is its own
process on plain asyncio (as the services run) and does nothing but forward
the request's bytes upstream and the answer's bytes back: no auth, no
logging, no parsing. The relay path crosses two such processes (relay and
agent); the scheduler path three (scheduler, relay, agent) plus a durable
usage record. Every figure is measured in the same run as its direct
baseline, the chains interleaved with it, and the median of the rounds is
kept (machines vary from day to day)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics

import numpy as np
import tritonclient.grpc.aio as tc
from tritonclient.grpc import InferInput

from idlegrid.bench.kit import free_port, latencies_ms, p50_p99_ms, report, throughput

CONCURRENCY = 32
SERVICE = "inference.GRPCInferenceService"
HOPS = (1, 2, 3)


def _proxy_main(port: int, upstream: str, ready) -> None:
    import grpc

    async def main() -> None:
        channel = grpc.aio.insecure_channel(upstream)
        infer = channel.unary_unary(f"/{SERVICE}/ModelInfer")

        async def forward(request: bytes, context) -> bytes:
            return await infer(request)

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(forward)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


async def _measure(url: str, n_lat: int, n_rps: int) -> tuple[float, float]:
    """(p50 ms of serial calls, calls/s at CONCURRENCY) for the echo model at ``url``."""
    client = tc.InferenceServerClient(url=url)
    data = np.asarray([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    inp = InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)

    async def call() -> None:
        await client.infer("echo", [inp])

    try:
        await latencies_ms(call, 100)  # warm-up: connections, caches
        p50, _ = p50_p99_ms(await latencies_ms(call, n_lat))
        return p50, await throughput(call, n_rps, concurrency=CONCURRENCY)
    finally:
        await client.close()


async def run(args, config) -> int:
    from idlegrid.demo import start_demo_triton

    n_lat, n_rps, rounds = (200, 1000, 1) if args.quick else (600, 3000, 3)
    triton = await asyncio.to_thread(start_demo_triton, models=("echo",))
    ctx = multiprocessing.get_context("spawn")
    procs = []
    try:
        chain = {0: triton.grpc_url}
        for hop in range(1, max(HOPS) + 1):  # proxy k forwards to proxy k-1 (proxy 0: Triton)
            port, ready = free_port(), ctx.Event()
            proc = ctx.Process(target=_proxy_main, args=(port, chain[hop - 1], ready), daemon=True)
            proc.start()
            procs.append(proc)
            if not await asyncio.to_thread(ready.wait, 60):
                raise RuntimeError("a bench proxy did not start")
            chain[hop] = f"127.0.0.1:{port}"
        runs: dict[int, list[tuple[float, float]]] = {hop: [] for hop in (0, *HOPS)}
        for _ in range(rounds):
            for hop in runs:
                runs[hop].append(await _measure(chain[hop], n_lat, n_rps))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.to_thread(proc.join, 30)
        await asyncio.to_thread(triton.stop)
    p50 = {hop: statistics.median(r[0] for r in v) for hop, v in runs.items()}
    rps = {hop: statistics.median(r[1] for r in v) for hop, v in runs.items()}
    result: dict = {"direct_p50_ms": round(p50[0], 3), "direct_rps": round(rps[0])}
    for hop in HOPS:
        result[f"hops_{hop}_added_p50_ms"] = round(p50[hop] - p50[0], 3)
        result[f"hops_{hop}_rps_ratio"] = round(rps[hop] / rps[0], 3)
    result |= {"concurrency": CONCURRENCY, "rounds": rounds, "model": "echo",
               "cpu_count": len(os.sched_getaffinity(0))}
    report("bare grpc-aio hops (pass-through proxies) vs direct tritonclient", result, as_json=args.json)
    return 0

