"""Per-call streams on the link: a caller who leaves cancels the Triton
request on the node; a node that sends past a bound fails that call with
RESOURCE_EXHAUSTED and is cancelled; a slow consumer holds the relay to the
call's window of replies."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.utils import InferenceServerException

from idlegrid.common.node_link import bounds
from tests.harness.polling import eventually
from tests.harness.tritons import POOL
from tests.relay import support
from tests.relay.support import ECHO_MODEL_NAME, echo_inputs, headers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def slow_triton():
    """A Triton that generates one token per 200 ms, this module's own (the
    option holds no state between requests, so its tests share it)."""
    triton = await asyncio.to_thread(POOL.own, llm_delay_ms=200)
    yield triton
    await asyncio.to_thread(triton.kill)


@pytest.fixture
async def slow_node(relay, registry, slow_triton):
    """A node of its own (a test may stop it) in front of the slow Triton."""
    node_id, token = await registry.node()
    link = await support.link_node([relay], node_id, token, slow_triton.grpc_url)
    await link.wait_linked()
    await registry.wait_ready(node_id)  # verified through the link: no canary call in flight
    yield link
    await link.stop()


def _raw_llm_stream(ch, node_id: bytes, prompt: str, max_tokens: int):
    """A raw ModelStreamInfer call on ``ch`` (the test holds the call: it can
    cancel it, or stop reading it)."""
    request = kpb.ModelInferRequest(model_name=support.LLM_MODEL_NAME)
    for i in support.llm_request(prompt, max_tokens)["inputs"]:
        request.inputs.append(i._get_tensor())
        request.raw_input_contents.append(i._get_content())
    method = ch.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                              request_serializer=kpb.ModelInferRequest.SerializeToString,
                              response_deserializer=kpb.ModelStreamInferResponse.FromString)

    async def requests():
        yield request

    return method(requests(), metadata=tuple(headers(node_id).items()))


async def test_a_caller_who_leaves_cancels_the_triton_request(relay, slow_node):
    """The caller cancels its call (as the scheduler does when its consumer
    leaves) after two tokens of a long generation: the relay cancels the
    call on the node at once, and the agent its Triton call."""
    before = slow_node.cancelled_calls
    async with grpc.aio.insecure_channel(support.relay_addr(relay)) as ch:
        call = _raw_llm_stream(ch, slow_node.node_id, "Count to one thousand:", 500)
        got = 0
        async for reply in call:
            assert not reply.error_message, reply.error_message
            got += 1
            if got == 2:
                assert slow_node.in_flight == 1
                break
        call.cancel()  # the caller leaves; the generation would go on for up to 500 tokens (100 s)
    # The relay's Cancel reached the agent while the call was live, and the agent ended its Triton call.
    await eventually(lambda: slow_node.in_flight == 0 and slow_node.cancelled_calls > before,
                     what="the agent to cancel the Triton call")
    await eventually(lambda: not relay.hub.get(slow_node.node_id).calls, what="the relay to forget the call")


async def test_a_flood_past_replies_max_fails_and_is_cancelled_on_the_node(relay, slow_node):
    before = slow_node.cancelled_calls
    async with support.client(relay) as c:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _result, error in support.stream_llm(c, slow_node.node_id, "Count to one thousand:", 500,
                                                           **bounds(replies_max=3)):
                assert error is None, error
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await eventually(lambda: slow_node.in_flight == 0 and slow_node.cancelled_calls > before,
                     what="the node's call to be cancelled")


async def test_reply_bytes_max_fails_a_unary_call(relay, node):
    async with support.client(relay) as c:
        with pytest.raises(InferenceServerException) as e:
            await c.infer(ECHO_MODEL_NAME, echo_inputs([1.0] * 256),
                          headers=headers(node.node_id, **bounds(reply_bytes_max=100)))
        assert e.value.status() == str(grpc.StatusCode.RESOURCE_EXHAUSTED)
        # Within the bound the same call passes.
        r = await c.infer(ECHO_MODEL_NAME, echo_inputs([1.0] * 256),
                          headers=headers(node.node_id, **bounds(reply_bytes_max=1 << 20)))
        assert np.array_equal(r.as_numpy("OUTPUT0"), np.ones((1, 256), dtype=np.float32))


async def test_bad_bounds_are_invalid_argument(relay, node):
    async with support.client(relay) as c:
        with pytest.raises(InferenceServerException) as e:
            await c.is_server_live(headers=headers(node.node_id, **{"idlegrid-replies-max": "-1"}))
    assert e.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)


async def test_a_slow_consumer_holds_the_relay_to_the_window(config, relay, node):
    """The caller stops reading (a tiny HTTP/2 window on its side): the relay
    buffers the call's window of replies and no more, the agent waits for
    credit, and the stream completes once the caller reads again."""
    options = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(support.relay_addr(relay), options=options) as ch:
        call = _raw_llm_stream(ch, node.node_id, "Count from one to one thousand:", 300)
        window = support.SETTINGS.window_replies

        def stalled():
            link = relay.hub.get(node.node_id)
            buffered = max((len(c.items) for c in link.calls.values()), default=0)
            return buffered > 0 and node.waiting_credit == 1

        # The relay holds what the caller has not taken (at most the window;
        # less by the credit it gave back for replies grpc accepted), and the
        # agent waits for credit instead of reading on from Triton.
        await eventually(stalled, what="the relay to hold replies while the agent waits for credit")
        assert 0 < relay.hub.get(node.node_id).buffered_high <= window
        sent = node.replies_sent
        replies = [r async for r in call]
    assert all(not r.error_message for r in replies)
    assert len(replies) > sent > 0 and node.replies_sent >= len(replies)
    assert await call.code() == grpc.StatusCode.OK


async def test_a_link_that_drops_mid_call_fails_the_call_unavailable(relay, slow_node):
    async with support.client(relay) as c:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _result, error in support.stream_llm(c, slow_node.node_id, "Count to one thousand:", 500):
                assert error is None, error
                await slow_node.stop()  # the agent goes away after the first token
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
