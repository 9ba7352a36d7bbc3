"""The floor under the relay's memory per idle link, measured in the same
run: a bare grpc-aio server whose only method is an empty bidirectional
stream, holding N idle streams opened the way the relay bench opens its idle
links (``streams_per_channel`` on each client connection). Its RSS growth
per 1,000 streams is what grpc-aio itself costs per link before the relay
keeps anything."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

METHOD = "/idlegrid.bench.Floor/Idle"


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def _server(ports, done, options) -> None:
    started = 0

    async def idle(request_iterator, context):
        nonlocal started
        started += 1
        async for _ in request_iterator:
            pass
        return
        yield b""  # a stream handler

    async def main() -> None:
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("idlegrid.bench.Floor", {
            "Idle": grpc.stream_stream_rpc_method_handler(idle)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await asyncio.sleep(0.5)
        ports.put((port, _rss_mb()))
        opened = await asyncio.to_thread(done.get)
        deadline = asyncio.get_running_loop().time() + 60
        while started < opened and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - counted by handlers
            await asyncio.sleep(0.05)  # every stream reached its handler, as every relay link has
        ports.put(_rss_mb())
        await server.stop(0)

    asyncio.run(main())


def _clients(port: int, n: int, per_channel: int, ready, stop) -> None:
    async def main() -> None:
        async def never():
            await asyncio.Event().wait()
            yield b""

        channels, calls = [], []
        for i in range(n):
            if i % per_channel == 0:
                channels.append(grpc.aio.insecure_channel(
                    f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]))
                await channels[-1].channel_ready()
            stream = channels[-1].stream_stream(METHOD, request_serializer=bytes, response_deserializer=bytes)
            calls.append(stream(never()))
        await asyncio.sleep(1.0)  # the server has taken every stream
        ready.put(len(calls))
        await asyncio.to_thread(stop.get)

    asyncio.run(main())


def rss_mb_per_1k_streams(n: int, streams_per_channel: int, *, options: Sequence[tuple[str, Any]] = ()) -> float:
    """The bare server's RSS growth per 1,000 idle streams (blocking);
    ``options``: its grpc server options."""
    ctx = multiprocessing.get_context("spawn")
    ports, done, ready, stop = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=_server, args=(ports, done, list(options)), daemon=True)
    server.start()
    port, before = ports.get(timeout=60)
    clients = ctx.Process(target=_clients, args=(port, n, streams_per_channel, ready, stop), daemon=True)
    clients.start()
    try:
        opened = ready.get(timeout=300)
        done.put(opened)
        after = ports.get(timeout=120)
    finally:
        stop.put(1)
        clients.join(30)
        server.join(30)
        for p in (clients, server):
            if p.is_alive():
                p.kill()
    return (after - before) / opened * 1000


__all__ = ["rss_mb_per_1k_streams"]
