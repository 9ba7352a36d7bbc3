"""Helpers shared by the benchmarks: free ports, child services, percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def spawn(args: list[str], *, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Starts ``idlegrid ARGS`` as a child process, its output in ``log_path``."""
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child
    prefix = [sys.executable]
    profile_dir = os.environ.get("IDLEGRID_BENCH_PROFILE_DIR")  # profile the child with cProfile
    if profile_dir:
        prefix += ["-m", "cProfile", "-o", str(Path(profile_dir) / f"{args[0]}.prof")]
    return subprocess.Popen([*prefix, "-m", "idlegrid.cli.main", *args], env={**os.environ, **env},
                            stdout=log, stderr=subprocess.STDOUT)


def _agent_main(options, ready, log_path: str) -> None:
    """A node agent in a child process, as on a provider's machine."""
    from idlegrid.common import logs
    from idlegrid.common.server import settle_heap
    from idlegrid.node.agent import NodeAgent
    from idlegrid.registry.v1.registry_pb2 import NODE_STATE_READY

    with open(log_path, "a") as out:  # noqa: PTH123
        logs.configure(fmt="json", level="warning", stream=out)

        async def main() -> None:
            agent = NodeAgent(options)
            await agent.start()
            await agent.wait_for(NODE_STATE_READY, timeout_s=120)
            settle_heap()  # as `idlegrid node start` does
            ready.set()
            await asyncio.Event().wait()

        asyncio.run(main())


@contextlib.asynccontextmanager
async def agent_process(options, *, log_path: Path, timeout_s: float = 120.0):
    """Runs a NodeAgent for ``options`` (AgentOptions) in its own process
    until the block ends; yields once the node is READY. The agent lives on
    the provider's machine, so a bench that ran it in the callers' process
    would charge the callers' event loop with the agent's work."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_agent_main, args=(options, ready, str(log_path)), daemon=True)
    proc.start()
    try:
        if not await asyncio.to_thread(ready.wait, timeout_s):
            raise RuntimeError(f"the bench's node agent did not become READY (its log: {log_path})")
        yield proc
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.join, 30)
        if proc.is_alive():
            proc.kill()


async def wait_healthy(addr: str, *, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Waits until the gRPC health service at ``addr`` answers SERVING."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"service exited with {proc.returncode} before it was healthy")
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{addr} not healthy after {timeout_s} s")
            await asyncio.sleep(0.1)


def p50_p99_ms(latencies_ms: list[float]) -> tuple[float, float]:
    s = sorted(latencies_ms)
    return percentile(s, 0.5), percentile(s, 0.99)


async def latencies_ms(call, n: int) -> list[float]:
    """``call()`` n times one after the other; each one's wall time in ms."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t) * 1000)
    return out


async def throughput(call, n: int, *, concurrency: int) -> float:
    """Calls/s for n calls of ``call()`` from ``concurrency`` concurrent callers."""
    left = iter(range(n))

    async def worker():
        for _ in left:
            await call()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - t)


def report(title: str, result: dict, *, as_json: bool) -> None:
    """One JSON object (``--json``), or a titled table."""
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    sys.stdout.write(title + "\n")
    width = max(len(k) for k in result)
    for k, v in result.items():
        sys.stdout.write(f"  {k:{width}} {v:>12}\n")
