"""tritonclient.http against the gateway's KServe v2 passthrough (the echo
model on the demo Triton): health, metadata, inference with Triton's binary
tensor extension and with JSON tensors, metered per request."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

ECHO_PRICE = 1000


def _client(stack) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(stack.url.removeprefix("http://"), network_timeout=60)


def _input(values: np.ndarray, *, binary: bool) -> httpclient.InferInput:
    i = httpclient.InferInput("INPUT0", list(values.shape), "FP32")
    i.set_data_from_numpy(values, binary_data=binary)
    return i


async def test_health_and_metadata_through_tritonclient(stack):
    _, key = await stack.consumer()
    h = {"authorization": f"Bearer {key}"}

    def calls():
        c = _client(stack)
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready("echo", headers=h)
        assert not c.is_model_ready("nope", headers=h)
        return c.get_model_metadata("echo", headers=h), c.get_server_metadata()

    meta, server = await asyncio.to_thread(calls)
    assert meta["name"] == "echo"
    assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, -1]}]
    assert meta["outputs"][0]["name"] == "OUTPUT0"
    assert "binary_tensor_data" in server["extensions"]


@pytest.mark.parametrize("binary", [True, False])
async def test_infer_round_trips_tensors_and_charges_the_request_price(stack, binary):
    credits = 100_000
    _, key = await stack.consumer(credits)
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7

    def call():
        out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
        return _client(stack).infer("echo", [_input(x, binary=binary)], outputs=[out],
                                    headers={"authorization": f"Bearer {key}"}, request_id="r-1")

    result = await asyncio.to_thread(call)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
    assert result.get_response()["id"] == "r-1"
    account = await stack.settled_account(key)
    assert account["spent_micros"] == ECHO_PRICE and account["available_micros"] == credits - ECHO_PRICE


async def test_default_tritonclient_request_gets_binary_outputs(stack):
    _, key = await stack.consumer()
    x = np.ones((1, 5), dtype=np.float32)
    result = await asyncio.to_thread(lambda: _client(stack).infer(
        "echo", [_input(x, binary=True)], headers={"authorization": f"Bearer {key}"}))
    assert result.get_output("OUTPUT0")["parameters"]["binary_data_size"] == 20
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


async def test_infer_answers_headers_and_kserve_errors(stack):
    _, key = await stack.consumer()
    async with stack.client(key) as h:
        r = await h.post("/v2/models/echo/infer", json={
            "inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [[1, 2]]}]})
        assert r.status_code == 200
        assert r.headers["x-idlegrid-cost-micros"] == str(ECHO_PRICE)
        assert r.headers["x-idlegrid-node"] == stack.node_id.hex()
        assert r.json()["outputs"][0]["data"] == [1.0, 2.0]
        missing = await h.post("/v2/models/nope/infer", json={
            "inputs": [{"name": "INPUT0", "shape": [1], "datatype": "FP32", "data": [1]}]})
        assert missing.status_code == 404 and "nope" in missing.json()["error"]
        bad = await h.post("/v2/models/echo/infer", json={
            "inputs": [{"name": "INPUT0", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]})
        assert bad.status_code == 400 and "elements" in bad.json()["error"]
    async with stack.client() as anonymous:
        r = await anonymous.post("/v2/models/echo/infer", json={"inputs": []})
        assert r.status_code == 401 and isinstance(r.json()["error"], str)


async def test_tritonclient_sees_gateway_errors_as_inference_server_exceptions(stack):
    _, key = await stack.consumer(credits=0)
    x = np.ones((1, 2), dtype=np.float32)
    with pytest.raises(InferenceServerException) as e:
        await asyncio.to_thread(lambda: _client(stack).infer(
            "echo", [_input(x, binary=True)], headers={"authorization": f"Bearer {key}"}))
    assert "credits" in str(e.value)
