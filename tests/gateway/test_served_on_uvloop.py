"""The gateway as ``idlegrid gateway serve`` runs it: a process of its own on
uvloop (cli/main.py; the gRPC services stay on plain asyncio), whose grpc.aio
clients reach the module's stack. A KServe inference, a chat completion
streamed token by token, and the request id a caller sends all go through
it."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from idlegrid.bench.kit import free_port
from idlegrid.cli.main import _on_uvloop
from tests.harness.polling import eventually

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

IDLEGRID = str(Path(sys.executable).parent / "idlegrid")
LLM = "smollm2-135m-instruct"
STOP_S = 30.0  # a bound on the wait for the child to stop, never a threshold


@pytest.fixture(scope="module")
async def served(stack, config):
    """``idlegrid gateway serve`` in a child process, on the stack's database
    and backends: its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDLEGRID_")}
    env.update(IDLEGRID_HOME=str(config.home), IDLEGRID_SERVICE_TOKEN=config.service_token,
               IDLEGRID_DATABASE_URL=stack.db_url, IDLEGRID_GATEWAY_PORT=str(port),
               IDLEGRID_LOG_FORMAT="json", IDLEGRID_LOG_LEVEL="warning",
               **{f"IDLEGRID_{n.upper()}_ADDR": f"127.0.0.1:{stack.parts[n].port}"
                  for n in ("ledger", "scheduler", "metering", "registry")})
    proc = await asyncio.create_subprocess_exec(IDLEGRID, "gateway", "serve", env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    async def up() -> bool:
        assert proc.returncode is None, f"the gateway exited with {proc.returncode}"
        try:
            async with httpx.AsyncClient(base_url=url, timeout=5) as c:
                return (await c.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    try:
        await eventually(up, what="the served gateway's /healthz")
        yield proc.pid, url
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def test_only_what_serves_no_grpc_runs_on_uvloop():
    assert _on_uvloop(argparse.Namespace(command="gateway", gateway_command="serve"))
    assert _on_uvloop(argparse.Namespace(command="bench"))
    for service in ("ledger", "registry", "scheduler", "metering", "relay"):
        assert not _on_uvloop(argparse.Namespace(command=service))
    assert not _on_uvloop(argparse.Namespace(command="gateway", gateway_command="create-admin-key"))


async def test_the_served_gateway_runs_on_uvloop(served):
    pid, _ = served
    maps = await asyncio.to_thread(Path(f"/proc/{pid}/maps").read_text)
    assert "uvloop" in maps  # the loop's extension module is loaded in the child


async def test_a_kserve_inference_and_its_request_id_go_through_the_served_gateway(stack, served):
    _, url = served
    _, key = await stack.consumer()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    body = {"inputs": [{"name": "INPUT0", "shape": [2, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=120) as c:
        r = await c.post("/v2/models/echo/infer", json=body, headers={"x-request-id": "served-1"})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == x.ravel().tolist()
    assert r.headers["x-request-id"] == "served-1" and r.headers["x-idlegrid-node"] == stack.node_id.hex()


async def test_a_chat_completion_streams_through_the_served_gateway(stack, served):
    _, url = served
    _, key = await stack.consumer()
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
    stream = await client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "Name a colour."}],
                                                  max_tokens=8, temperature=0, stream=True)
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length") and last.usage.completion_tokens > 0
