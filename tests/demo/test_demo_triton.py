"""The demo provider node's real Triton Inference Server on the CPU.

The session's shared demo Triton (both models) serves most tests in this
module, and its shared failing one the failure test (tests/conftest.py:
each must stop cleanly at the end); a node that is killed or stopped here
gets its own. Everything is real: the
tritonserver binary, SmolLM2 through llama-cpp-python, the official
tritonclient over gRPC and HTTP. Generations are kept to a few tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from idlegrid.demo import (
    ECHO_MODEL_NAME,
    LLM_MODEL_NAME,
    DemoTriton,
    start_demo_triton,
    weights_sha256,
)
from idlegrid.demo.leftovers import Leftovers, group_pids
from idlegrid.models.weights import gguf_path
from tests.harness import eventually

pytestmark = pytest.mark.slow  # real demo Tritons, started and stopped

CHAT = json.dumps({"messages": [{"role": "user", "content": "What is the capital of France?"}]})
GREEDY = {"max_tokens": 12, "temperature": 0}
REPO_ROOT = Path(__file__).resolve().parents[2]


def llm_inputs(
    text: str, *, stream: bool, params: dict | None = None, exclude_input: bool | None = None
) -> list[grpcclient.InferInput]:
    def tensor(name: str, datatype: str, value: object) -> grpcclient.InferInput:
        t = grpcclient.InferInput(name, [1], datatype)
        t.set_data_from_numpy(np.array([value], dtype=np.object_ if datatype == "BYTES" else bool))
        return t

    inputs = [
        tensor("text_input", "BYTES", text.encode()),
        tensor("stream", "BOOL", stream),
        tensor("sampling_parameters", "BYTES", json.dumps(params or GREEDY).encode()),
    ]
    if exclude_input is not None:
        inputs.append(tensor("exclude_input_in_output", "BOOL", exclude_input))
    return inputs


def decoded(result: grpcclient.InferResult) -> dict[str, object]:
    return {
        "text": result.as_numpy("text_output")[0].decode(),
        "finish_reason": result.as_numpy("finish_reason")[0].decode(),
        "num_input_tokens": int(result.as_numpy("num_input_tokens")[0]),
        "num_output_tokens": int(result.as_numpy("num_output_tokens")[0]),
    }


async def generate(
    node: DemoTriton, inputs: list[grpcclient.InferInput]
) -> list[dict[str, object]]:
    """One request over the gRPC stream (the decoupled model's only gRPC
    path); its responses, decoded. Raises the first error response."""
    async with grpcaio.InferenceServerClient(node.grpc_url) as client:

        async def requests():
            yield {"model_name": LLM_MODEL_NAME, "inputs": inputs}

        responses = []
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                raise error
            responses.append(decoded(result))
        return responses


def echo_over_grpc(node: DemoTriton, values: np.ndarray) -> np.ndarray:
    with grpcclient.InferenceServerClient(node.grpc_url) as client:
        tensor = grpcclient.InferInput("INPUT0", list(values.shape), "FP32")
        tensor.set_data_from_numpy(values)
        return client.infer(ECHO_MODEL_NAME, [tensor]).as_numpy("OUTPUT0")


def test_server_and_both_models_report_ready_over_grpc_and_http(triton: DemoTriton) -> None:
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(LLM_MODEL_NAME) and client.is_model_ready(ECHO_MODEL_NAME)
    with httpclient.InferenceServerClient(triton.http_url) as client:
        assert client.is_server_ready()
        assert client.is_model_ready(LLM_MODEL_NAME) and client.is_model_ready(ECHO_MODEL_NAME)
    assert httpx.get(triton.metrics_url).status_code == 200


def test_echo_over_grpc_returns_its_input(triton: DemoTriton) -> None:
    values = np.array([[1.5, -2.0, 3.25, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(echo_over_grpc(triton, values), values)


def test_echo_over_http_returns_its_input_for_a_batch_of_two(triton: DemoTriton) -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    with httpclient.InferenceServerClient(triton.http_url) as client:
        tensor = httpclient.InferInput("INPUT0", [2, 3], "FP32")
        tensor.set_data_from_numpy(values)
        result = client.infer(ECHO_MODEL_NAME, [tensor]).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(result, values)


async def test_llm_without_stream_sends_one_response_with_text_and_token_counts(
    triton: DemoTriton,
) -> None:
    responses = await generate(triton, llm_inputs(CHAT, stream=False, exclude_input=True))
    assert len(responses) == 1
    (response,) = responses
    assert response["text"]
    assert response["finish_reason"] in ("stop", "length")
    assert response["num_input_tokens"] > 0
    assert 0 < response["num_output_tokens"] <= GREEDY["max_tokens"]


async def test_llm_stream_sends_chunks_that_add_up_to_the_whole_text(triton: DemoTriton) -> None:
    """Greedy decoding is deterministic, so the streamed chunks must join to
    the text the non-streaming request returns, and their token counts
    (vLLM's per-response deltas) must sum to its count."""
    (whole,) = await generate(triton, llm_inputs(CHAT, stream=False, exclude_input=True))
    chunks = await generate(triton, llm_inputs(CHAT, stream=True))
    assert len(chunks) > 1
    assert "".join(c["text"] for c in chunks) == whole["text"]
    assert sum(c["num_output_tokens"] for c in chunks) == whole["num_output_tokens"]
    assert all(c["num_input_tokens"] == whole["num_input_tokens"] for c in chunks)
    assert [c["finish_reason"] for c in chunks[:-1]] == ["None"] * (len(chunks) - 1)
    assert chunks[-1]["finish_reason"] == whole["finish_reason"]


async def test_llm_renders_chat_messages_with_the_model_chat_template(triton: DemoTriton) -> None:
    """Without exclude_input_in_output (vLLM's default when not streaming)
    the rendered prompt is prepended: SmolLM2's ChatML template."""
    (response,) = await generate(triton, llm_inputs(CHAT, stream=False))
    prompt = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert response["text"].startswith(prompt)
    assert len(response["text"]) > len(prompt)


async def test_llm_treats_plain_text_as_a_raw_prompt(triton: DemoTriton) -> None:
    (response,) = await generate(
        triton, llm_inputs("Once upon a time", stream=False, params={"max_tokens": 8, "seed": 7})
    )
    assert response["text"].startswith("Once upon a time")
    assert response["num_input_tokens"] == 4


async def test_llm_stops_at_a_stop_string_and_leaves_it_out(triton: DemoTriton) -> None:
    (whole,) = await generate(triton, llm_inputs(CHAT, stream=False, exclude_input=True))
    stop = whole["text"][len(whole["text"]) // 2 :][:3]
    cut = whole["text"].index(stop)
    chunks = await generate(
        triton, llm_inputs(CHAT, stream=True, params={**GREEDY, "stop": [stop]})
    )
    assert "".join(c["text"] for c in chunks) == whole["text"][:cut]
    assert chunks[-1]["finish_reason"] == "stop"


async def test_llm_rejects_an_unknown_sampling_parameter_by_name(triton: DemoTriton) -> None:
    with pytest.raises(InferenceServerException, match="unsupported sampling_parameters: best_of"):
        await generate(triton, llm_inputs(CHAT, stream=False, params={"best_of": 2}))


def test_llm_serves_triton_generate_endpoint_over_http(triton: DemoTriton) -> None:
    body = {
        "text_input": CHAT,
        "sampling_parameters": json.dumps(GREEDY),
        "exclude_input_in_output": True,
    }
    response = httpx.post(
        f"http://{triton.http_url}/v2/models/{LLM_MODEL_NAME}/generate", json=body, timeout=60
    )
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["text_output"] and out["finish_reason"] in ("stop", "length")
    assert out["num_input_tokens"] > 0 and out["num_output_tokens"] > 0


async def test_failing_node_is_ready_but_every_inference_returns_an_error(
    failing_triton: DemoTriton,
) -> None:
    with grpcclient.InferenceServerClient(failing_triton.grpc_url) as client:
        assert client.is_server_ready() and client.is_model_ready(LLM_MODEL_NAME)
    with pytest.raises(InferenceServerException, match="failing mode"):
        echo_over_grpc(failing_triton, np.ones((1, 2), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="failing mode"):
        await generate(failing_triton, llm_inputs(CHAT, stream=True))


async def test_kill_mid_stream_ends_the_stream_with_an_error_and_leaves_nothing_behind() -> None:
    """SIGKILL takes the whole process group down at once, as a crashed node
    goes; the client's stream fails instead of hanging, and the shared
    memory, model copies and workspace the node held are removed."""
    node = start_demo_triton(llm_delay_ms=200)
    try:
        leftovers = Leftovers.of_group(node.process.pid)
        assert leftovers.shm_files and leftovers.model_dirs
        errors: list[BaseException] = []
        chunks = 0
        async with grpcaio.InferenceServerClient(node.grpc_url) as client:

            async def requests():
                yield {
                    "model_name": LLM_MODEL_NAME,
                    "inputs": llm_inputs(CHAT, stream=True, params={"max_tokens": 64}),
                }

            try:
                async for _result, error in client.stream_infer(requests()):
                    if error is not None:
                        errors.append(error)
                        break
                    chunks += 1
                    if chunks == 1:
                        assert node.kill() == -9
            except (grpc.RpcError, InferenceServerException) as e:
                errors.append(e)
        assert chunks == 1 and errors
        assert node.live_pids() == []
        assert not node.workdir.exists()
        assert not any(p.exists() for p in leftovers.shm_files | leftovers.model_dirs)
        with grpcclient.InferenceServerClient(node.grpc_url) as client:
            with pytest.raises(InferenceServerException):
                client.is_server_live(client_timeout=5)
    finally:
        node.kill()


def test_stop_shuts_the_node_down_cleanly() -> None:
    node = start_demo_triton(models=(ECHO_MODEL_NAME,))
    np.testing.assert_array_equal(echo_over_grpc(node, np.ones((1, 3), dtype=np.float32)), 1.0)
    assert node.stop() == 0
    assert node.live_pids() == []
    assert not node.workdir.exists()


async def test_node_stops_by_itself_when_its_launcher_dies_without_stopping_it() -> None:
    launcher = (
        "import os\n"
        "from idlegrid.demo import start_demo_triton\n"
        "node = start_demo_triton(models=('echo',))\n"
        "print(node.process.pid, node.workdir, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", launcher],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    pid, workdir = out.stdout.splitlines()[-1].split()
    try:
        await eventually(lambda: group_pids(int(pid)) == [], what="the orphaned node to stop", every_s=0.25)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_weights_digest_is_the_sha256_of_the_gguf_file() -> None:
    expected = hashlib.sha256(gguf_path().read_bytes()).hexdigest()
    assert weights_sha256() == expected
    assert weights_sha256() is weights_sha256()
