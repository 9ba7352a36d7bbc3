"""``idlegrid node start`` as a provider runs it: a child process that reads
its config file and provider token, registers, is verified, and on SIGTERM
drains and deregisters before it exits."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid

import pytest

from idlegrid.registry.v1 import registry_pb2 as pb
from tests.harness import WAIT_S, eventually

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton


async def test_node_start_registers_and_drains_on_sigterm(reg, triton, tmp_path):
    p = await reg.provider()
    (tmp_path / "token").write_text(p.token + "\n")
    (tmp_path / "node.toml").write_text(
        'region = "cli"\n'
        f'provider_token_file = "{tmp_path / "token"}"\n'
        '[models.echo]\nprice_per_request = 4\n')
    id_file = tmp_path / "node-id"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDLEGRID_")}
    env.update(IDLEGRID_HOME=str(tmp_path / "home"), IDLEGRID_LOG_FORMAT="json")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "idlegrid.cli.main", "node", "start", "--direct", "--triton-url", triton.grpc_url,
        "--config", str(tmp_path / "node.toml"), "--registry", reg.addr, "--node-id-file", str(id_file),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output_task = asyncio.create_task(proc.stdout.read())
    try:
        await eventually(lambda: id_file.exists() or output_task.done())
        assert id_file.exists(), (await output_task).decode()
        node_id = uuid.UUID(id_file.read_text().strip()).bytes
        n = await reg.wait_state(node_id, pb.NODE_STATE_READY)
        assert n.region == "cli" and [m.offer.name for m in n.models] == ["echo"]
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), WAIT_S)
        output = (await output_task).decode()
        assert code == 0, output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    n = await reg.node(node_id)
    assert (n.state, n.state_reason) == (pb.NODE_STATE_OFFLINE, pb.STATE_REASON_DEREGISTERED)
    assert "node.drained" in output or "node.drain_timed_out" in output


async def test_node_start_exits_with_an_error_when_verification_fails(reg, triton, tmp_path):
    p = await reg.provider()
    (tmp_path / "token").write_text(p.token)
    # The echo model advertised as a language model: the registry's check refuses it
    # (the catalog here wrongly sells echo as one, so that the registration is admitted).
    llm = await reg.catalog_entry("smollm2-135m-instruct")
    llm.name, llm.context_length, llm.weights_digest = "echo", 128, ""
    await reg.sell(llm)
    (tmp_path / "node.toml").write_text(
        '[models.echo]\nkind = "llm"\ncontext_length = 128\nprice_per_million_input_tokens = 1\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDLEGRID_")}
    env.update(IDLEGRID_HOME=str(tmp_path / "home"), IDLEGRID_LOG_FORMAT="json")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "idlegrid.cli.main", "node", "start", "--direct", "--triton-url", triton.grpc_url,
        "--config", str(tmp_path / "node.toml"), "--provider-token-file", str(tmp_path / "token"),
        "--registry", reg.addr, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 1, output.decode()
    assert b"node.refused" in output and b"text_input" in output
