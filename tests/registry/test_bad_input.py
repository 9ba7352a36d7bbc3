"""Malformed requests are INVALID_ARGUMENT (or the documented status) and
leave nothing behind: no node in memory, no row in the database."""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from idlegrid.common.errors import InvalidArgument
from idlegrid.registry import validate
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.registry.support import beat, echo_offer, expect_status, llm_offer, registration

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def _nothing_written(h) -> None:
    assert not h.registry.nodes
    await h.registry._writer.flush()
    conn = await asyncpg.connect(h.db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM registry.nodes") == 0
        assert await conn.fetchval("SELECT count(*) FROM registry.node_models") == 0
        assert await conn.fetchval("SELECT count(*) FROM registry.node_events") == 0
    finally:
        await conn.close()


# Empty is no endpoint at all: a linked node (test_links.py).
BAD_ENDPOINTS = ["localhost", "http://127.0.0.1:8001", "127.0.0.1:0", "127.0.0.1:70000", "[::1:8001",
                 "[not-ip]:8001", "999.1.1.1:8001", "a b:8001", "host:80x", "host:-1", ":8001", "::1:8001",
                 "h" * 250 + ":8001", "-bad-.example:8001", "127.0.0.1:08001"]


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
async def test_a_malformed_endpoint_is_invalid_and_leaves_nothing(fast, endpoint):
    p = await fast.provider()
    await expect_status(fast.anon.RegisterNode(registration(endpoint), metadata=p.md), INVALID)
    await _nothing_written(fast)


@pytest.mark.parametrize("endpoint", ["127.0.0.1:8001", "[::1]:8001", "triton.example.com:443",
                                      "node-7.local:1", "localhost:65535"])
def test_well_formed_endpoints_pass(endpoint):
    assert validate.endpoint(endpoint) == endpoint


def _wire_price(field_number: int) -> bytes:
    """A Price whose field is -1 as an int64 would encode it (a client with
    a signed type): the ten-byte varint of 2^64 - 1."""
    return bytes([field_number << 3]) + b"\xff" * 9 + b"\x01"


async def test_a_negative_price_is_invalid_and_leaves_nothing(fast):
    p = await fast.provider()
    with pytest.raises(ValueError):
        pb.Price(per_request=-1)  # the typed client refuses outright
    for field_number, offer in ((3, echo_offer()), (1, llm_offer()), (2, llm_offer())):
        price = pb.Price.FromString(_wire_price(field_number))
        offer.price.MergeFrom(price)
        assert max(offer.price.per_request, offer.price.per_million_input_tokens,
                   offer.price.per_million_output_tokens) == 2**64 - 1
        e = await expect_status(fast.anon.RegisterNode(registration(models=[offer]), metadata=p.md), INVALID)
        assert "negative" in e.details()
    await _nothing_written(fast)


def _offer(**changes) -> pb.ModelOffer:
    o = echo_offer()
    for k, v in changes.items():
        setattr(o, k, v) if not isinstance(v, pb.Price) else o.price.CopyFrom(v)
    return o


def _llm(**changes) -> pb.ModelOffer:
    o = llm_offer()
    for k, v in changes.items():
        setattr(o, k, v) if not isinstance(v, pb.Price) else o.price.CopyFrom(v)
    return o


def _hw(**changes) -> pb.Hardware:
    hw = pb.Hardware(gpus=[pb.Gpu(name="NVIDIA L4", memory_bytes=24 << 30, count=1)], cpu_cores=8,
                     memory_bytes=64 << 30)
    for k, v in changes.items():
        if k.startswith("gpu_"):
            setattr(hw.gpus[0], k[4:], v)
        else:
            setattr(hw, k, v)
    return hw


BAD_REQUESTS = {
    "price above the maximum": dict(models=[_offer(price=pb.Price(per_request=10**12 + 1))]),
    "no models": dict(models=[]),
    "65 models": dict(models=[_offer(name=f"m{i}") for i in range(65)]),
    "a model twice": dict(models=[echo_offer(), echo_offer()]),
    "model kind unset": dict(models=[_offer(kind=pb.MODEL_KIND_UNSPECIFIED)]),
    "model name with a slash": dict(models=[_offer(name="a/b")]),
    "model name too long": dict(models=[_offer(name="m" * 129)]),
    "model version not digits": dict(models=[_offer(version="v1")]),
    "absurd max_batch_size": dict(models=[_offer(max_batch_size=1 << 30)]),
    "language model without a context length": dict(models=[_llm(context_length=0)]),
    "absurd context length": dict(models=[_llm(context_length=1 << 30)]),
    "tensor model with a context length": dict(models=[_offer(context_length=4096)]),
    "language model priced per request": dict(models=[_llm(price=pb.Price(per_request=5))]),
    "tensor model priced per token": dict(models=[_offer(price=pb.Price(per_million_input_tokens=5))]),
    "malformed weights digest": dict(models=[_offer(weights_digest="md5:abc")]),
    "no hardware": dict(hardware=None),
    "zero cpu cores": dict(hardware=_hw(cpu_cores=0)),
    "absurd cpu cores": dict(hardware=_hw(cpu_cores=1 << 20)),
    "zero memory": dict(hardware=_hw(memory_bytes=0)),
    "absurd memory": dict(hardware=_hw(memory_bytes=1 << 60)),
    "absurd gpu count": dict(hardware=_hw(gpu_count=1000)),
    "zero gpu count": dict(hardware=_hw(gpu_count=0)),
    "absurd gpu memory": dict(hardware=_hw(gpu_memory_bytes=1 << 50)),
    "17 gpu kinds": dict(hardware=pb.Hardware(cpu_cores=1, memory_bytes=1, gpus=[
        pb.Gpu(name=f"g{i}", memory_bytes=1, count=1) for i in range(17)])),
    "region with capitals": dict(region="EU-West"),
    "region too long": dict(region="r" * 65),
    "33 labels": dict(labels={f"k{i}": "v" for i in range(33)}),
    "label key with a space": dict(labels={"a b": "v"}),
    "label value too long": dict(labels={"k": "v" * 256}),
    "node id of 3 bytes": dict(node_id=b"abc"),
    "node id of zeros": dict(node_id=bytes(16)),
    "agent version too long": dict(agent_version="v" * 65),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_absurd_registrations_are_invalid_and_leave_nothing(fast, case):
    p = await fast.provider()
    kw = dict(BAD_REQUESTS[case])
    if kw.get("hardware", 0) is None:
        request = registration()
        request.ClearField("hardware")
    else:
        request = registration(**kw)
    await expect_status(fast.anon.RegisterNode(request, metadata=p.md), INVALID)
    await _nothing_written(fast)


@pytest.mark.parametrize("load", [dict(in_flight=2_000_000), dict(queue_depth=10**7),
                                  dict(recent_latency_us=10**12), dict(gpu_utilization_pct=101)])
async def test_an_absurd_load_ends_the_heartbeat_stream_without_touching_the_node(fast, load):
    p = await fast.provider()
    node = await fast.register(p, registration())
    await fast.wait_state(node.node_id, pb.NODE_STATE_READY)
    call = fast.heartbeats(node)
    await call.write(beat(node, **load))
    await expect_status(call.read(), INVALID)
    assert not (await fast.node(node.node_id)).HasField("load")


async def test_bad_provider_requests_are_invalid(fast):
    for name, account in (("", b"\x01" * 16), ("n" * 129, b"\x01" * 16), (" padded", b"\x01" * 16),
                          ("ok", b""), ("ok", b"\x01" * 15), ("ok", bytes(16))):
        await expect_status(fast.admin.CreateProvider(pb.CreateProviderRequest(
            name=name, ledger_account_id=account)), INVALID)
    assert not fast.registry.providers


async def test_a_provider_name_is_unique(fast):
    await fast.provider("same")
    await expect_status(fast.admin.CreateProvider(pb.CreateProviderRequest(
        name="same", ledger_account_id=b"\x02" * 16)), grpc.StatusCode.ALREADY_EXISTS)


async def test_bad_reads_are_invalid_or_not_found(fast):
    await expect_status(fast.admin.GetNode(pb.GetNodeRequest(node_id=b"abc")), INVALID)
    await expect_status(fast.admin.GetNode(pb.GetNodeRequest(node_id=b"\x05" * 16)), grpc.StatusCode.NOT_FOUND)
    await expect_status(fast.admin.ListNodes(pb.ListNodesRequest(page_size=1001)), INVALID)
    await expect_status(fast.admin.ListNodes(pb.ListNodesRequest(page_token=b"x")), INVALID)
    await expect_status(fast.admin.ListNodes(pb.ListNodesRequest(states=[42])), INVALID)
    p = await fast.provider()
    await expect_status(fast.anon.Drain(pb.DrainRequest(node_id=b"\x05" * 16), metadata=p.md),
                        grpc.StatusCode.NOT_FOUND)
    await expect_status(fast.anon.Drain(pb.DrainRequest(node_id=b"short"), metadata=p.md), INVALID)


def test_validation_errors_carry_invalid_argument():
    with pytest.raises(InvalidArgument):
        validate.endpoint("nope")
