"""Helpers shared by the registry and node tests: one demo Triton for the
whole test session, a registry harness on a fresh database, request
builders, and small stream readers."""

from __future__ import annotations

import asyncio
import atexit
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field

import grpc
import pytest

from idlegrid.common.auth import bearer
from idlegrid.common.channel import open_channel
from idlegrid.registry import service
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as pb
from idlegrid.registry.v1 import registry_pb2_grpc
from tests.conftest import TOKEN, new_database

LLM = "smollm2-135m-instruct"
ECHO = "echo"
WAIT_S = 120.0  # an upper bound so a broken test fails instead of hanging; never a threshold

_triton = None
_triton_lock = threading.Lock()


def demo_triton():
    """The session's demo Triton (both models), started on first use and
    stopped when the test process exits."""
    global _triton
    with _triton_lock:
        if _triton is None:
            try:
                from idlegrid.demo import start_demo_triton
            except ImportError as e:  # the node extra is missing
                pytest.skip(f"demo Triton unavailable: {e}")
            _triton = start_demo_triton()
            atexit.register(_triton.stop)
        return _triton


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llm_offer(**price) -> pb.ModelOffer:
    return pb.ModelOffer(name=LLM, kind=pb.MODEL_KIND_LLM, max_batch_size=0, context_length=2048,
                         price=pb.Price(per_million_input_tokens=price.get("input", 50_000),
                                        per_million_output_tokens=price.get("output", 200_000)))


def echo_offer(per_request: int = 10) -> pb.ModelOffer:
    return pb.ModelOffer(name=ECHO, kind=pb.MODEL_KIND_TENSOR, max_batch_size=64,
                         price=pb.Price(per_request=per_request))


def hardware() -> pb.Hardware:
    return pb.Hardware(gpus=[pb.Gpu(name="NVIDIA L4", memory_bytes=24 << 30, count=2)], cpu_cores=8,
                       memory_bytes=64 << 30)


def registration(endpoint: str = "127.0.0.1:8001", models=None, **kw) -> pb.RegisterNodeRequest:
    return pb.RegisterNodeRequest(endpoint=endpoint, hardware=kw.pop("hardware", hardware()),
                                  region=kw.pop("region", "eu-west"), labels=kw.pop("labels", {"tier": "test"}),
                                  models=models if models is not None else [echo_offer()], **kw)


@dataclass
class Provider:
    provider: pb.Provider
    token: str

    @property
    def md(self):
        return bearer(self.token)


@dataclass
class Node:
    node_id: bytes
    token: str
    interval_ms: int

    @property
    def md(self):
        return bearer(self.token)


@dataclass
class Harness:
    """A registry in-process on a free port, with stubs."""

    running: service.RunningRegistry
    db_url: str
    admin: registry_pb2_grpc.RegistryServiceStub        # service token
    anon: registry_pb2_grpc.RegistryServiceStub         # no service token (nodes, providers)
    channels: list = field(default_factory=list)

    @property
    def registry(self):
        return self.running.registry

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    async def provider(self, name: str | None = None) -> Provider:
        r = await self.admin.CreateProvider(pb.CreateProviderRequest(
            name=name or f"p-{uuid.uuid4().hex[:8]}", ledger_account_id=os.urandom(16)))
        return Provider(r.provider, r.provider_token)

    async def register(self, provider: Provider, request: pb.RegisterNodeRequest) -> Node:
        r = await self.anon.RegisterNode(request, metadata=provider.md)
        return Node(r.node_id, r.node_token, r.heartbeat_interval_ms)

    async def node(self, node_id: bytes) -> pb.Node:
        return (await self.admin.GetNode(pb.GetNodeRequest(node_id=node_id))).node

    async def wait_state(self, node_id: bytes, *states: int, timeout_s: float = WAIT_S) -> pb.Node:
        """Polls GetNode until the node is in one of ``states``."""
        found: list[pb.Node] = []

        async def check() -> bool:
            found[:] = [await self.node(node_id)]
            return found[0].state in states

        await eventually(check, timeout_s=timeout_s)
        return found[0]

    def heartbeats(self, node: Node):
        """A Heartbeat stream call with the node's token."""
        return self.anon.Heartbeat(metadata=node.md)


async def start_harness(settings: RegistrySettings, config, db_url: str, port: int = 0) -> Harness:
    running = await service.start(config, port=port, database_url=db_url, settings=settings)
    addr = f"127.0.0.1:{running.port}"
    admin_ch = open_channel(addr, token=TOKEN)
    anon_ch = open_channel(addr, token=None)
    return Harness(running, db_url, registry_pb2_grpc.RegistryServiceStub(admin_ch),
                   registry_pb2_grpc.RegistryServiceStub(anon_ch), [admin_ch, anon_ch])


async def stop_harness(h: Harness) -> None:
    for ch in h.channels:
        await ch.close()
    await h.running.stop(grace_s=0.5)


async def eventually(check, *, timeout_s: float = WAIT_S, every_s: float = 0.02) -> None:
    """Waits until ``check()`` (sync or async) is true: for conditions with no
    event to wait on (another process, a counter). The timeout only stops a
    broken test from hanging."""
    async with asyncio.timeout(timeout_s):
        while True:
            ok = check()
            if asyncio.iscoroutine(ok):
                ok = await ok
            if ok:
                return
            await asyncio.sleep(every_s)


async def fresh_db(pg_admin_url: str) -> str:
    return await new_database(pg_admin_url)


def beat(node: Node, **load) -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(node_id=node.node_id, load=pb.NodeLoad(**load))


async def next_delta(stream, *, kind=None) -> pb.NodeDelta:
    """The next NodeDelta on a watch stream, skipping load reports."""
    while True:
        m = await stream.read()
        assert m is not grpc.aio.EOF, "watch stream ended"
        if m.WhichOneof("event") == "delta":
            return m.delta


async def read_snapshot(stream) -> tuple[bytes, int, list[pb.Node]]:
    """(epoch, revision, nodes) of the snapshot at the head of a watch stream."""
    nodes: list[pb.Node] = []
    while True:
        m = await stream.read()
        assert m.WhichOneof("event") == "snapshot", m
        nodes.extend(m.snapshot.nodes)
        if m.snapshot.last:
            return m.epoch, m.snapshot.revision, nodes


async def expect_status(awaitable, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    try:
        await awaitable
    except grpc.aio.AioRpcError as e:
        assert e.code() == code, f"expected {code.name}, got {e.code().name}: {e.details()}"
        return e
    raise AssertionError(f"expected {code.name}, the call succeeded")


class KeepAlive:
    """Heartbeats for ``node`` in the background (a stand-in for an agent in
    registry tests): ``async with KeepAlive(h, node, every_s=0.02): ...``.
    Collects the registry's answers in ``told``."""

    def __init__(self, h: Harness, node: Node, *, every_s: float) -> None:
        self._h, self._node, self._every_s = h, node, every_s
        self.told: list[pb.HeartbeatResponse] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        call = self._h.heartbeats(self._node)

        async def read():
            while (r := await call.read()) is not grpc.aio.EOF:
                self.told.append(r)

        reader = asyncio.create_task(read())
        try:
            while True:
                await call.write(beat(self._node))
                await asyncio.sleep(self._every_s)
        finally:
            reader.cancel()
            call.cancel()

    async def __aenter__(self) -> KeepAlive:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
