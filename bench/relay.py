"""``idlegrid bench relay``: dispatch to the same demo Triton directly and
through a relay, in one run, and the cost of idle links on one replica.

Processes: the relay (``idlegrid relay serve``) and the node's agent end
(NodeLink) each in a child process, the demo Triton in its own; this process
runs the callers (tritonclient.grpc.aio) and the registry stand-in that
accepts the links (bench/relay_standin.py: AttachLink/DetachLink with node
tokens, no database, so that 10,000 idle links need no 10,000 registered
nodes).

Figures: added_p50_ms / added_p99_ms (relay minus direct, one caller, echo,
unary); rps_ratio (relay / direct, 32 callers); streamed_tokens_per_s_ratio
(LLM stream through the link / direct); attached_nodes and
rss_mb_per_1k_links (relay RSS growth for N idle links, multiplexed over a
few channels from this process); bare_grpc_rss_mb_per_1k_streams, the floor
under it measured in the same run (bench/grpc_floor.py: a bare grpc-aio
server holding idle streams, multiplexed the same way), and their ratio."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.aio as tc
from tritonclient.grpc import InferInput

from idlegrid.bench.grpc_floor import rss_mb_per_1k_streams
from idlegrid.bench.kit import (
    free_port,
    latencies_ms,
    p50_p99_ms,
    report,
    spawn,
    throughput,
    wait_healthy,
)
from idlegrid.bench.relay_standin import StandInRegistry
from idlegrid.common.auth import bearer
from idlegrid.common.config import Config
from idlegrid.common.identities import RELAY
from idlegrid.common.node_link import NODE_ID_HEADER
from idlegrid.relay.v1 import relay_pb2 as pb

TOKEN = "bench-relay-service-token"
CONCURRENCY = 32
STREAMS_PER_CHANNEL = 800  # under the server's 1,000 concurrent streams per connection
IDLE_LINKS = 10_000
LINK_OPEN_CONCURRENCY = 200
LLM = "smollm2-135m-instruct"


def _agent_main(relay_addr: str, node_id: bytes, token: str, triton_url: str, ready) -> None:
    """The node's agent end, in a child process."""
    from idlegrid.node.link import NodeLink

    async def main():
        link = NodeLink(relay_addrs=[relay_addr], node_id=node_id, node_token=token, triton_url=triton_url)
        await link.start()
        await link.wait_linked(timeout_s=60)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class IdleLinks:
    """N idle links held from this process over a few channels: each says
    Hello and answers the relay's pings."""

    def __init__(self, relay_addr: str, registry: StandInRegistry) -> None:
        self.relay_addr, self.registry = relay_addr, registry
        self.channels: list[grpc.aio.Channel] = []
        self.calls: list = []
        self.queues: list[asyncio.Queue] = []
        self.tasks: list[asyncio.Task] = []
        self.linked = 0

    async def open(self, n: int) -> None:
        for i in range((n + STREAMS_PER_CHANNEL - 1) // STREAMS_PER_CHANNEL):
            self.channels.append(grpc.aio.insecure_channel(
                self.relay_addr, options=[("grpc.use_local_subchannel_pool", 1), ("grpc.channel_id", i)]))
        gate = asyncio.Semaphore(LINK_OPEN_CONCURRENCY)

        async def one(i: int) -> None:
            async with gate:
                node_id, token = self.registry.node()
                q: asyncio.Queue = asyncio.Queue(16)
                q.put_nowait(pb.LinkUp(hello=pb.Hello(node_id=node_id, agent_version="bench")))

                async def requests():
                    while (m := await q.get()) is not None:
                        yield m

                ch = self.channels[i // STREAMS_PER_CHANNEL]
                call = ch.stream_stream("/idlegrid.relay.v1.RelayService/Link",
                                        request_serializer=pb.LinkUp.SerializeToString,
                                        response_deserializer=pb.LinkDown.FromString)(
                    requests(), metadata=bearer(token))
                self.calls.append(call)
                self.queues.append(q)
                first = await call.read()  # the relay's first ping: attached
                assert first is not grpc.aio.EOF, "a link was refused"
                self.linked += 1
                self.tasks.append(asyncio.create_task(self._pong(call, q)))

        await asyncio.gather(*(one(i) for i in range(n)))

    @staticmethod
    async def _pong(call, q: asyncio.Queue) -> None:
        while (down := await call.read()) is not grpc.aio.EOF:  # (read() took the first: no async for)
            if down.WhichOneof("event") == "ping":
                q.put_nowait(pb.LinkUp(pong=pb.Pong(nonce=down.ping.nonce)))

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for call in self.calls:
            call.cancel()
        for ch in self.channels:
            await ch.close()


def _echo_input() -> list[InferInput]:
    data = np.asarray([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    i = InferInput("INPUT0", list(data.shape), "FP32")
    i.set_data_from_numpy(data)
    return [i]


def _llm_request(max_tokens: int) -> dict:
    def tensor(name, datatype, value):
        i = InferInput(name, [1], datatype)
        i.set_data_from_numpy(np.array([value], dtype=np.object_ if datatype == "BYTES" else np.bool_))
        return i

    params = json.dumps({"max_tokens": max_tokens, "temperature": 0.0}).encode()
    return {"model_name": LLM, "inputs": [tensor("text_input", "BYTES", b"Count from one to one hundred:"),
                                          tensor("sampling_parameters", "BYTES", params),
                                          tensor("stream", "BOOL", True),
                                          tensor("exclude_input_in_output", "BOOL", True)]}


async def _tokens_per_s(client: tc.InferenceServerClient, headers: dict, *, runs: int, max_tokens: int) -> float:
    tokens, elapsed = 0, 0.0
    for _ in range(runs):
        req = _llm_request(max_tokens)

        async def requests(req=req):
            yield req

        t = time.perf_counter()
        async for result, error in client.stream_infer(requests(), headers=headers or None):
            if error is not None:
                raise RuntimeError(str(error))
            if result.get_response().outputs:
                tokens += 1
        elapsed += time.perf_counter() - t
    return tokens / elapsed


async def run(args, config) -> int:
    from idlegrid.demo import start_demo_triton

    quick = args.quick
    n_lat, rps_s, idle_n = (300, 2.0, 1_000) if quick else (2_000, 5.0, IDLE_LINKS)
    home = Path(tempfile.mkdtemp(prefix="idlegrid-bench-relay-"))
    triton = await asyncio.to_thread(start_demo_triton)
    # The relay presents its own identity's token, derived from the bench's root token.
    relay_token = Config.from_env({"IDLEGRID_SERVICE_TOKEN": TOKEN, "IDLEGRID_HOME": str(home)}).token_for(RELAY)
    registry = StandInRegistry(relay_token)
    registry_addr = await registry.start()
    port = free_port()
    relay_addr = f"127.0.0.1:{port}"
    relay = spawn(["relay", "serve"], env={
        "IDLEGRID_HOME": str(home), "IDLEGRID_SERVICE_TOKEN": TOKEN, "IDLEGRID_REGISTRY_ADDR": registry_addr,
        "IDLEGRID_RELAY_PORT": str(port), "IDLEGRID_LOG_FORMAT": "json", "IDLEGRID_LOG_LEVEL": "warning"},
        log_path=home / "relay.log")
    ctx = multiprocessing.get_context("spawn")
    agent = None
    idle = IdleLinks(relay_addr, registry)
    try:
        await wait_healthy(relay_addr, proc=relay)
        node_id, node_token = registry.node()
        ready = ctx.Event()
        agent = ctx.Process(target=_agent_main, args=(relay_addr, node_id, node_token, triton.grpc_url, ready),
                            daemon=True)
        agent.start()
        if not await asyncio.to_thread(ready.wait, 60):
            raise RuntimeError("the bench agent did not link")
        headers = {**dict(bearer(TOKEN)), NODE_ID_HEADER: node_id.hex()}
        direct, via = tc.InferenceServerClient(url=triton.grpc_url), tc.InferenceServerClient(url=relay_addr)
        inputs = _echo_input()

        async def call_direct():
            await direct.infer("echo", inputs)

        async def call_relay():
            await via.infer("echo", inputs, headers=headers)

        for fn in (call_direct, call_relay):  # warm-up: connections, caches
            await latencies_ms(fn, 100)
        d_lat = await latencies_ms(call_direct, n_lat)
        r_lat = await latencies_ms(call_relay, n_lat)
        d_rps = await _rps(call_direct, rps_s)
        r_rps = await _rps(call_relay, rps_s)
        runs, max_tokens = (2, 32) if quick else (4, 64)
        await _tokens_per_s(direct, {}, runs=1, max_tokens=8)  # warm-up
        d_tps = await _tokens_per_s(direct, {}, runs=runs, max_tokens=max_tokens)
        r_tps = await _tokens_per_s(via, headers, runs=runs, max_tokens=max_tokens)
        await direct.close()
        await via.close()
        rss_before = _rss_mb(relay.pid)
        await idle.open(idle_n)
        rss_after = _rss_mb(relay.pid)
        attached = len(registry.links)
    finally:
        await idle.close()
        if agent is not None:
            agent.terminate()
        relay.terminate()
        relay.wait(30)
        await registry.stop()
        await asyncio.to_thread(triton.stop)
    floor = await asyncio.to_thread(rss_mb_per_1k_streams, min(idle_n, 2_000), STREAMS_PER_CHANNEL)
    per_1k = (rss_after - rss_before) / max(1, idle.linked) * 1000
    (dp50, dp99), (rp50, rp99) = p50_p99_ms(d_lat), p50_p99_ms(r_lat)
    result = {
        "added_p50_ms": round(rp50 - dp50, 3), "added_p99_ms": round(rp99 - dp99, 3),
        "rps_ratio": round(r_rps / d_rps, 3),
        "streamed_tokens_per_s_ratio": round(r_tps / d_tps, 3),
        "attached_nodes": attached, "idle_links": idle.linked,
        "rss_mb_per_1k_links": round(per_1k, 2),
        "bare_grpc_rss_mb_per_1k_streams": round(floor, 2), "rss_ratio_to_bare_grpc": round(per_1k / floor, 3),
        "relay_rss_mb_before": round(rss_before, 1), "relay_rss_mb_after": round(rss_after, 1),
        "direct_p50_ms": round(dp50, 3), "direct_p99_ms": round(dp99, 3),
        "relay_p50_ms": round(rp50, 3), "relay_p99_ms": round(rp99, 3),
        "direct_rps": round(d_rps), "relay_rps": round(r_rps), "concurrency": CONCURRENCY,
        "direct_tokens_per_s": round(d_tps, 1), "relay_tokens_per_s": round(r_tps, 1),
        "requests_latency": n_lat, "registry": "stand-in (bench/relay_standin.py)", "model": "echo",
    }
    report("relay bench (KServe through a node link vs direct tritonclient)", result, as_json=args.json)
    return 0


async def _rps(call, duration_s: float) -> float:
    """Calls/s from CONCURRENCY callers over about ``duration_s``."""
    n = max(CONCURRENCY * 10, int(await throughput(call, CONCURRENCY * 20, concurrency=CONCURRENCY) * duration_s))
    return await throughput(call, n, concurrency=CONCURRENCY)


__all__ = ["run"]
