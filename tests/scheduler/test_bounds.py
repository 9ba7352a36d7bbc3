"""What the scheduler lets a node send back (bounds.py), and where its calls
go (TritonPool.route): the relay holding the node's link with the node named
and the service token, or a direct endpoint that never sees the token."""

from __future__ import annotations

import pytest

from idlegrid.common import node_link
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler import bounds
from idlegrid.scheduler.triton import NodeError, TritonPool
from idlegrid.scheduler.v1 import scheduler_pb2 as spb


def test_a_language_job_may_send_a_reply_per_token_plus_a_few_and_bytes_from_max_tokens():
    b = bounds.for_llm(8)
    assert b.replies_max == 8 + bounds.REPLIES_SLACK
    assert b.reply_bytes_max == 8 * bounds.TOKEN_BYTES_MAX + b.replies_max * bounds.REPLY_OVERHEAD_BYTES
    assert b.headers() == {node_link.REPLIES_MAX_HEADER: str(b.replies_max),
                           node_link.REPLY_BYTES_MAX_HEADER: str(b.reply_bytes_max)}


def test_a_tensor_job_is_bounded_by_its_outputs_when_their_size_is_known():
    meta = spb.ModelMetadata(name="m", outputs=[
        spb.TensorMetadata(name="A", datatype="FP32", shape=[2, 3]),
        spb.TensorMetadata(name="B", datatype="INT64", shape=[4])])
    both = bounds.for_tensors(meta)
    assert both.replies_max == 1
    assert both.reply_bytes_max == 2 * 3 * 4 + 4 * 8 + 2 * bounds.REPLY_OVERHEAD_BYTES
    assert bounds.for_tensors(meta, ["B"]).reply_bytes_max == 4 * 8 + bounds.REPLY_OVERHEAD_BYTES


@pytest.mark.parametrize("output", [spb.TensorMetadata(name="A", datatype="FP32", shape=[-1, 3]),
                                    spb.TensorMetadata(name="A", datatype="BYTES", shape=[1])])
def test_a_tensor_job_of_unknown_output_size_gets_the_configured_cap(output):
    assert bounds.for_tensors(spb.ModelMetadata(outputs=[output])).reply_bytes_max == bounds.TENSOR_REPLY_BYTES_MAX
    assert bounds.for_tensors(None).reply_bytes_max == bounds.TENSOR_REPLY_BYTES_MAX


def test_the_meter_cuts_off_past_either_bound():
    m = bounds.Meter(bounds.ReplyBound(replies_max=2, reply_bytes_max=100))
    m.add(40)
    m.add(40)
    with pytest.raises(bounds.BoundExceeded, match="replies"):
        m.add(1)
    m = bounds.Meter(bounds.ReplyBound(replies_max=10, reply_bytes_max=100))
    m.add(100)
    with pytest.raises(bounds.BoundExceeded, match="bytes"):
        m.add(1)


async def test_a_linked_node_is_reached_through_its_relay_with_its_id_the_token_and_the_bound():
    pool = TritonPool(token="svc")
    node = rpb.Node(node_id=bytes(range(16)), link=rpb.NodeLink(relay_id="r", relay_addr="10.0.0.5:50055"))
    try:
        client, headers = pool.route(node, bounds.for_llm(4))
        assert pool.client("10.0.0.5:50055") is client
        assert headers[node_link.NODE_ID_HEADER] == bytes(range(16)).hex()
        assert headers["authorization"] == "Bearer svc"
        assert headers[node_link.REPLIES_MAX_HEADER] == str(4 + bounds.REPLIES_SLACK)
    finally:
        await pool.close()


async def test_a_direct_endpoint_never_sees_the_service_token():
    pool = TritonPool(token="svc")
    try:
        _, headers = pool.route(rpb.Node(node_id=bytes(16), endpoint="203.0.113.7:8001"))
        assert "authorization" not in headers and node_link.NODE_ID_HEADER not in headers
    finally:
        await pool.close()


def test_a_node_with_neither_link_nor_endpoint_fails_the_attempt():
    with pytest.raises(NodeError, match="holds no link"):
        TritonPool(token="svc").route(rpb.Node(node_id=bytes(16)))
