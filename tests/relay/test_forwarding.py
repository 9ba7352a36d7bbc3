"""A node linked through the relay answers the KServe calls the marketplace
makes, through plain tritonclient against the relay address; nothing else
reaches the node."""

from __future__ import annotations

import os

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as tc
from tritonclient.utils import InferenceServerException

from idlegrid.common.auth import bearer
from idlegrid.common.node_link import NODE_ID_HEADER
from tests.relay import support
from tests.relay.support import ECHO_MODEL_NAME, LLM_MODEL_NAME, echo_inputs, headers

pytestmark = pytest.mark.slow


async def test_echo_infer_through_the_link(relay, node):
    async with support.client(relay) as c:
        r = await c.infer(ECHO_MODEL_NAME, echo_inputs([1.0, 2.0, 3.5]), headers=headers(node.node_id))
    assert np.array_equal(r.as_numpy("OUTPUT0"), np.asarray([[1.0, 2.0, 3.5]], dtype=np.float32))


async def test_metadata_config_and_readiness_through_the_link(relay, node):
    h = headers(node.node_id)
    async with support.client(relay) as c:
        assert await c.is_server_live(headers=h)
        assert await c.is_server_ready(headers=h)
        assert await c.is_model_ready(LLM_MODEL_NAME, headers=h)
        meta = await c.get_model_metadata(ECHO_MODEL_NAME, headers=h)
        config = await c.get_model_config(ECHO_MODEL_NAME, headers=h)
    assert meta.name == ECHO_MODEL_NAME and [i.name for i in meta.inputs] == ["INPUT0"]
    assert config.config.max_batch_size == 64


async def test_llm_streams_tokens_through_the_link(relay, node):
    texts = []
    async with support.client(relay) as c:
        async for result, error in support.stream_llm(c, node.node_id, "Count from one to ten:", 12):
            assert error is None, error
            out = result.as_numpy("text_output")
            if out is not None:
                texts.append(out.reshape(-1)[0])
    assert len(texts) >= 2 and b"".join(texts)  # token by token, with text


async def test_node_errors_pass_through_with_their_code(relay, node):
    async with support.client(relay) as c:
        with pytest.raises(InferenceServerException) as e:
            await c.infer("no-such-model", echo_inputs([1.0]), headers=headers(node.node_id))
    # Triton's own answer (the relay knows no models): its code and message, not the relay's.
    assert "no-such-model" in e.value.message() and e.value.status() != str(grpc.StatusCode.UNAVAILABLE)


async def test_unknown_node_is_not_found(relay, node):
    async with support.client(relay) as c:
        with pytest.raises(InferenceServerException) as e:
            await c.is_server_live(headers=headers(os.urandom(16)))
    assert e.value.status() == str(grpc.StatusCode.NOT_FOUND)


async def test_missing_or_bad_node_header_is_invalid_argument(relay, node):
    async with support.client(relay) as c:
        for h in (dict(bearer(support.TOKEN)), {**dict(bearer(support.TOKEN)), NODE_ID_HEADER: "zz"}):
            with pytest.raises(InferenceServerException) as e:
                await c.is_server_live(headers=h)
            assert e.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)


async def test_methods_off_the_whitelist_never_reach_the_node(relay, node):
    async with support.client(relay) as c:
        for call in (c.load_model(ECHO_MODEL_NAME, headers=headers(node.node_id)),
                     c.get_model_repository_index(headers=headers(node.node_id)),
                     c.get_log_settings(headers=headers(node.node_id))):
            with pytest.raises(InferenceServerException) as e:
                await call
            assert e.value.status() == str(grpc.StatusCode.PERMISSION_DENIED)


async def test_the_marketplace_face_needs_the_service_credential(relay, node):
    async with tc.InferenceServerClient(url=support.relay_addr(relay)) as c:
        with pytest.raises(InferenceServerException) as e:
            await c.is_server_live(headers={NODE_ID_HEADER: node.node_id.hex()})
    assert e.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
