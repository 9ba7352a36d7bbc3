"""What the relay tests share: a relay in-process on a free port, agents'
links (NodeLink) in front of demo Tritons, and KServe clients (plain
tritonclient.grpc.aio) that call a node through the relay."""

from __future__ import annotations

import json

import numpy as np
import tritonclient.grpc.aio as tc
from tritonclient.grpc import InferInput

from idlegrid.common.auth import bearer
from idlegrid.common.node_link import NODE_ID_HEADER
from idlegrid.demo.names import ECHO_MODEL_NAME, LLM_MODEL_NAME
from idlegrid.node.link import NodeLink
from idlegrid.relay import service as relay_service
from idlegrid.relay.settings import RelaySettings
from tests.harness.basics import TOKEN

# Short pings, a small window: the tests see flow control at work quickly.
SETTINGS = RelaySettings(window_replies=4, ping_interval_ms=200, pong_timeout_ms=5_000)


async def start_relay(config, registry_addr: str, settings: RelaySettings = SETTINGS):
    return await relay_service.start(config, port=0, registry_addr=registry_addr, settings=settings)


def relay_addr(relay) -> str:
    return f"127.0.0.1:{relay.port}"


async def link_node(relays, node_id: bytes, token: str, triton_url: str, **kw) -> NodeLink:
    link = NodeLink(relay_addrs=[relay_addr(r) for r in relays], node_id=node_id, node_token=token,
                    triton_url=triton_url, backoff_initial_s=0.05, backoff_max_s=0.5, **kw)
    await link.start()
    return link


def headers(node_id: bytes, **extra: str) -> dict[str, str]:
    return {**dict(bearer(TOKEN)), NODE_ID_HEADER: node_id.hex(), **extra}


def client(relay) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(url=relay_addr(relay))


def echo_inputs(values) -> list[InferInput]:
    i = InferInput("INPUT0", [1, len(values)], "FP32")
    i.set_data_from_numpy(np.asarray([values], dtype=np.float32))
    return [i]


def _bytes(name: str, value: bytes) -> InferInput:
    i = InferInput(name, [1], "BYTES")
    i.set_data_from_numpy(np.array([value], dtype=np.object_))
    return i


def _bool(name: str, value: bool) -> InferInput:
    i = InferInput(name, [1], "BOOL")
    i.set_data_from_numpy(np.array([value], dtype=np.bool_))
    return i


def llm_request(prompt: str, max_tokens: int) -> dict:
    """One streaming generation request, with the vLLM-style tensors the
    scheduler sends (services/scheduler/triton.py)."""
    params = {"max_tokens": max_tokens, "temperature": 0.0}
    inputs = [_bytes("text_input", prompt.encode()), _bytes("sampling_parameters", json.dumps(params).encode()),
              _bool("stream", True), _bool("exclude_input_in_output", True)]
    return {"model_name": LLM_MODEL_NAME, "inputs": inputs}


async def stream_llm(c: tc.InferenceServerClient, node_id: bytes, prompt: str, max_tokens: int, **hdrs):
    """Yields (result, error) pairs of one streaming generation."""
    req = llm_request(prompt, max_tokens)

    async def requests():
        yield req

    async for item in c.stream_infer(requests(), headers=headers(node_id, **hdrs)):
        yield item


__all__ = ["ECHO_MODEL_NAME", "LLM_MODEL_NAME"]
