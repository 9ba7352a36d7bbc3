"""``idlegrid bench registry``: one registry in its own process (on a fresh
embedded PostgreSQL, verification off: simulated nodes have no Triton),
driven over gRPC from this process.

Figures:
- heartbeats/s sustained: every simulated node opens its heartbeat stream;
  then all send as fast as the registry takes them for a fixed time and
  half-close. The count is what the registry acknowledged (its per-stream
  totals, returned after each half-close), divided by the wall time from the
  start of sending to the last acknowledgement, so closing every stream is
  included (a conservative figure). ``equivalent_nodes_at_10s`` is that rate
  times ten (nodes heartbeating every 10 s).
- paced: the same streams send at the target of 10,000 heartbeats/s in all
  (each node once per streams/10,000 s) for the same time: the rate sent,
  whether the registry acknowledged every one, and how late the sender was.
- watch fan-out delay: W watchers follow WatchNodes; one node at a time is
  drained; the delay is from just before the Drain call to the arrival of
  its delta at each watcher (same clock: all in this process), over every
  (change, watcher) pair. Measured idle, then again during the paced run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from idlegrid.bench.kit import free_port, percentile, spawn, wait_healthy
from idlegrid.common.auth import bearer
from idlegrid.registry.v1 import registry_pb2 as pb
from idlegrid.registry.v1 import registry_pb2_grpc

TOKEN = "bench-token"
STREAMS_PER_CHANNEL = 500   # below the server's 1,000 concurrent streams per connection
REGISTER_CONCURRENCY = 64
PHASE_TIMEOUT_S = 180.0
TARGET_PER_S = 10_000       # the target: 100,000 nodes heartbeating every 10 s


@dataclass(frozen=True, slots=True)
class Sizes:
    nodes: int
    heartbeat_s: float
    watchers: int
    changes: int


FULL = Sizes(nodes=10_000, heartbeat_s=10.0, watchers=100, changes=50)
QUICK = Sizes(nodes=1_000, heartbeat_s=3.0, watchers=20, changes=20)


# The catalog entry of the model the bench's nodes offer (verification is
# skipped: its canary never runs).
BENCH_MODEL = pb.CatalogModel(name="bench-model", kind=pb.MODEL_KIND_TENSOR, canaries=[pb.CatalogCanary(
    kserve_request_json='{"inputs": [{"name": "IN", "datatype": "FP32", "shape": [1], "data": [0]}]}',
    kserve_expected_json='{"outputs": [{"name": "OUT", "datatype": "FP32", "shape": [1], "data": [0]}]}')])


def _channels(addr: str, n: int) -> list[grpc.aio.Channel]:
    # Distinct channel args give distinct connections (gRPC shares identical ones).
    return [grpc.aio.insecure_channel(addr, options=[("idlegrid.bench.channel", i)]) for i in range(n)]


def _service_md():
    return bearer(TOKEN)


async def _register(stubs, provider_token: str, n: int) -> list[tuple[bytes, str]]:
    offer = pb.ModelOffer(name="bench-model", kind=pb.MODEL_KIND_TENSOR, max_batch_size=8,
                          price=pb.Price(per_request=1))
    hw = pb.Hardware(gpus=[pb.Gpu(name="NVIDIA L4", memory_bytes=24 << 30, count=1)], cpu_cores=8,
                     memory_bytes=32 << 30)
    out: list[tuple[bytes, str]] = []
    todo = iter(range(n))

    async def worker(stub):
        for i in todo:
            r = await stub.RegisterNode(pb.RegisterNodeRequest(
                endpoint=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:8001", hardware=hw, region="bench",
                models=[offer]), metadata=bearer(provider_token))
            out.append((r.node_id, r.node_token))

    await asyncio.gather(*(worker(stubs[k % len(stubs)]) for k in range(REGISTER_CONCURRENCY)))
    return out


async def _wait_ready(stub, n: int) -> None:
    while True:
        r = await stub.ListNodes(pb.ListNodesRequest(page_size=1, states=[pb.NODE_STATE_JOINING,
                                                                          pb.NODE_STATE_VERIFYING]),
                                 metadata=_service_md())
        if not r.nodes:
            return
        await asyncio.sleep(0.1)


@dataclass(slots=True)
class Beats:
    sent: int = 0              # after the opening heartbeat of each stream
    acked: int = 0             # what the registry counted, from its final answers
    elapsed_s: float = 0.0     # from the start of sending to the last final answer
    late_ms: list[float] | None = None  # paced: how late each heartbeat left
    last_sent: float = 0.0     # paced: when the last heartbeat left (perf_counter)


async def _heartbeats(stubs, nodes: list[tuple[bytes, str]], seconds: float, *, rate: float | None = None,
                      started: asyncio.Event | None = None) -> Beats:
    """Opens one stream per node (one acknowledged heartbeat each, untimed),
    then sends for ``seconds``: as fast as the registry takes them, or paced
    at ``rate`` heartbeats/s in all (each node every len(nodes)/rate s), and
    half-closes."""
    go, stop = asyncio.Event(), asyncio.Event()
    all_open = asyncio.Event()
    out = Beats(late_ms=[] if rate else None)
    opened = 0
    load = pb.NodeLoad(in_flight=1, queue_depth=0, recent_latency_us=1200)
    period_s = len(nodes) / rate if rate else 0.0
    t0 = 0.0

    async def node(i: int, stub, node_id: bytes, token: str) -> None:
        nonlocal opened
        call = stub.Heartbeat(metadata=bearer(token))
        beat = pb.HeartbeatRequest(node_id=node_id, load=load)
        await call.write(beat)
        await call.read()  # answered after the first heartbeat
        opened += 1
        if opened == len(nodes):
            all_open.set()
        await go.wait()
        if rate:
            due = t0 + period_s * i / len(nodes)
            while due < t0 + seconds:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                out.late_ms.append(max(0.0, time.perf_counter() - due) * 1e3)
                await call.write(beat)
                out.sent += 1
                out.last_sent = max(out.last_sent, time.perf_counter())
                due += period_s
        else:
            while not stop.is_set():
                await call.write(beat)
                out.sent += 1
        await call.done_writing()
        last = 0
        while (r := await call.read()) is not grpc.aio.EOF:
            last = r.heartbeats_received
        out.acked += last - 1

    tasks = [asyncio.create_task(node(i, stubs[i // STREAMS_PER_CHANNEL], nid, tok))
             for i, (nid, tok) in enumerate(nodes)]
    opening = asyncio.create_task(all_open.wait())
    done, _ = await asyncio.wait([opening, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if opening not in done:  # a stream failed to open
        opening.cancel()
        stop.set()
        go.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        next(iter(done)).result()
    t0 = time.perf_counter()
    go.set()
    if started is not None:
        started.set()
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    out.elapsed_s = time.perf_counter() - t0
    out.last_sent -= t0
    return out


async def _fanout(admin_stubs, node_stub, nodes: list[tuple[bytes, str]], watchers: int) -> list[float]:
    """Drains ``nodes`` one at a time; returns every (change, watcher) delay in ms."""
    sent: dict[bytes, float] = {}
    delays: list[float] = []
    pending = {nid for nid, _ in nodes}
    ready = asyncio.Event()
    subscribed = 0

    async def watcher(stub):
        nonlocal subscribed
        call = stub.WatchNodes(pb.WatchNodesRequest(omit_load=True), metadata=_service_md())
        mine = set(pending)
        while True:
            m = await call.read()
            if m.WhichOneof("event") == "snapshot" and m.snapshot.last:
                subscribed += 1
                if subscribed == watchers:
                    ready.set()
            elif m.WhichOneof("event") == "delta" and m.delta.node.node_id in mine \
                    and m.delta.node.state == pb.NODE_STATE_DRAINING:
                delays.append((time.perf_counter() - sent[m.delta.node.node_id]) * 1e3)
                mine.discard(m.delta.node.node_id)
                if not mine:
                    call.cancel()
                    return

    tasks = [asyncio.create_task(watcher(admin_stubs[i % len(admin_stubs)])) for i in range(watchers)]
    await ready.wait()
    for nid, tok in nodes:
        sent[nid] = time.perf_counter()
        await node_stub.Drain(pb.DrainRequest(node_id=nid), metadata=bearer(tok))
        await asyncio.sleep(0.02)  # one change at a time
    await asyncio.gather(*tasks)
    return delays


async def _phase(name: str, awaitable, timeout_s: float = PHASE_TIMEOUT_S):
    """Each phase has a deadline: a stuck bench fails and says where."""
    try:
        async with asyncio.timeout(timeout_s):
            return await awaitable
    except TimeoutError:
        raise RuntimeError(f"bench phase {name!r} did not finish within {timeout_s:g} s") from None


def _summary(delays: list[float]) -> dict[str, float]:
    d = sorted(delays)
    return {"p50_ms": round(percentile(d, 0.5), 2), "p99_ms": round(percentile(d, 0.99), 2),
            "max_ms": round(d[-1] if d else 0.0, 2)}


async def run(args, config) -> int:
    sizes = QUICK if args.quick else FULL
    home = Path(tempfile.mkdtemp(prefix="idlegrid-bench-registry-"))
    port = free_port()
    env = {"IDLEGRID_HOME": str(home), "IDLEGRID_REGISTRY_PORT": str(port), "IDLEGRID_LOG_LEVEL": "warning",
           "IDLEGRID_LOG_FORMAT": "json", "IDLEGRID_SERVICE_TOKEN": TOKEN,
           # The bench's nodes are direct endpoints in 10/8 (never dialled: verification is skipped).
           "IDLEGRID_REGISTRY_DIRECT_ENDPOINTS": "on", "IDLEGRID_REGISTRY_DIRECT_ALLOW_CIDRS": "10.0.0.0/8"}
    os.environ.pop("IDLEGRID_DATABASE_URL", None)
    # A long lease: the nodes kept for the fan-out measurement send no heartbeats.
    proc = spawn(["registry", "serve", "--skip-verification", "--heartbeat-interval-ms", "600000"],
                 env=env, log_path=home / "registry.log")
    addr = f"127.0.0.1:{port}"
    channels: list[grpc.aio.Channel] = []
    try:
        await wait_healthy(addr, proc=proc, timeout_s=120)
        n_channels = (sizes.nodes + sizes.changes * 2 + STREAMS_PER_CHANNEL - 1) // STREAMS_PER_CHANNEL
        channels = _channels(addr, max(n_channels, 4))
        stubs = [registry_pb2_grpc.RegistryServiceStub(c) for c in channels]
        admin = stubs[0]
        provider = await admin.CreateProvider(pb.CreateProviderRequest(
            name="bench", ledger_account_id=os.urandom(16)), metadata=_service_md())
        await admin.PutCatalogModel(pb.PutCatalogModelRequest(model=BENCH_MODEL, actor="bench", reason="the bench's"
                                                              " model (nodes offer only catalog models)"),
                                    metadata=_service_md())
        t0 = time.perf_counter()
        nodes = await _phase("register", _register(stubs, provider.provider_token, sizes.nodes + 2 * sizes.changes))
        register_s = time.perf_counter() - t0
        await _phase("ready", _wait_ready(admin, len(nodes)))
        beaters, idle_set, busy_set = (nodes[:sizes.nodes], nodes[sizes.nodes:sizes.nodes + sizes.changes],
                                       nodes[sizes.nodes + sizes.changes:])
        await _phase("warm-up", _heartbeats(stubs, beaters[:200], 1.0))
        idle = await _phase("fan-out idle", _fanout(stubs, admin, idle_set, sizes.watchers))
        flood = await _phase("heartbeats", _heartbeats(stubs, beaters, sizes.heartbeat_s))
        started = asyncio.Event()
        paced_task = asyncio.create_task(_heartbeats(stubs, beaters, sizes.heartbeat_s, rate=TARGET_PER_S,
                                                     started=started))
        await _phase("paced start", started.wait())
        busy = await _phase("fan-out paced", _fanout(stubs, admin, busy_set, sizes.watchers))
        paced = await _phase("paced", paced_task)
        offline = await admin.ListNodes(pb.ListNodesRequest(page_size=1, states=[pb.NODE_STATE_OFFLINE]),
                                        metadata=_service_md())
    finally:
        for c in channels:
            await c.close()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    rate = flood.acked / flood.elapsed_s
    late = sorted(paced.late_ms)
    result = {
        "heartbeats_per_s": round(rate),
        "equivalent_nodes_at_10s": round(rate * 10),
        "heartbeat_streams": sizes.nodes,
        "heartbeats_acknowledged": flood.acked,
        "heartbeat_seconds": round(flood.elapsed_s, 2),
        "paced_target_per_s": TARGET_PER_S,
        "paced_sent_per_s": round(paced.sent / max(paced.last_sent, sizes.heartbeat_s)),
        "paced_all_acknowledged": paced.acked == paced.sent,
        "paced_lateness": {"p50_ms": round(percentile(late, 0.5), 2), "p99_ms": round(percentile(late, 0.99), 2)},
        "nodes_offline_after": len(offline.nodes),
        "registrations_per_s": round(len(nodes) / register_s),
        "watchers": sizes.watchers,
        "fanout_changes": sizes.changes,
        "fanout_idle": _summary(idle),
        "fanout_at_paced_load": _summary(busy),
        "cpu_count": os.cpu_count(),
    }
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write("registry bench (registry process + simulated nodes and watchers in this process, "
                         "embedded PostgreSQL, one machine)\n")
        for k, v in result.items():
            if isinstance(v, dict):
                v = "  ".join(f"{a}={b}" for a, b in v.items())
            sys.stdout.write(f"  {k:28} {v}\n")
    return 0
