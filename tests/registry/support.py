"""Request builders and stream readers for the registry tests (the node
agent tests use some). The registry itself comes from the harness
(tests/harness/registry.py) through the ``reg``, ``fast`` and
``make_registry`` fixtures."""

from __future__ import annotations

import asyncio
import itertools
import socket

import grpc

from idlegrid.models.weights import weights_sha256
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.harness.registry import RegisteredNode, RegistryHarness

LLM = "smollm2-135m-instruct"
ECHO = "echo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llm_offer(**price) -> pb.ModelOffer:
    """The demo language model as the catalog sells it (its digest and context length)."""
    return pb.ModelOffer(name=LLM, kind=pb.MODEL_KIND_LLM, max_batch_size=0, context_length=2048,
                         weights_digest=f"sha256:{weights_sha256()}",
                         price=pb.Price(per_million_input_tokens=price.get("input", 50_000),
                                        per_million_output_tokens=price.get("output", 200_000)))


def echo_offer(per_request: int = 10) -> pb.ModelOffer:
    return pb.ModelOffer(name=ECHO, kind=pb.MODEL_KIND_TENSOR, max_batch_size=64,
                         price=pb.Price(per_request=per_request))


def hardware() -> pb.Hardware:
    return pb.Hardware(gpus=[pb.Gpu(name="NVIDIA L4", memory_bytes=24 << 30, count=2)], cpu_cores=8,
                       memory_bytes=64 << 30)


# Direct endpoints are unique among live nodes: each registration that names
# none gets its own (nothing listens there; the tests that use it skip
# verification or expect it to fail).
_PORTS = itertools.count(20_000)


def unique_endpoint() -> str:
    return f"127.0.0.1:{next(_PORTS)}"


def registration(endpoint: str | None = None, models=None, **kw) -> pb.RegisterNodeRequest:
    endpoint = unique_endpoint() if endpoint is None else endpoint
    return pb.RegisterNodeRequest(endpoint=endpoint, hardware=kw.pop("hardware", hardware()),
                                  region=kw.pop("region", "eu-west"), labels=kw.pop("labels", {"tier": "test"}),
                                  models=models if models is not None else [echo_offer()], **kw)


def beat(node: RegisteredNode, **load) -> pb.HeartbeatRequest:
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

    def __init__(self, h: RegistryHarness, node: RegisteredNode, *, every_s: float) -> None:
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
