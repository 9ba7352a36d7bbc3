"""A node behind NAT: a demo node in a network namespace of its own, made by
the test (netns.py), whose Triton listens only on that namespace's loopback
and which has no inbound route. The marketplace runs in the root namespace,
bound to the host's end of the pair; the node joins with the one provider
command (``idlegrid node start --demo --relay HOST:PORT``), passes
verification through its link, and serves chat (streaming too) and tensor
jobs through the gateway. Nothing inside the namespace accepts a connection
from outside."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as rpb
from tests.harness.polling import eventually
from tests.harness.rest import RestStack
from tests.harness.stack import PARTS, start_stack
from tests.nat import netns

pytestmark = pytest.mark.slow  # a scenario: real services, a namespace and a demo Triton in it

LLM = "smollm2-135m-instruct"
CHAT = [{"role": "user", "content": "Name a colour."}]
JOIN_WAIT_S = 300.0  # the node starts its demo Triton (loads the model) before it joins: a bound, not a threshold
STOP_WAIT_S = 60.0
REGISTRY = RegistrySettings(heartbeat_interval_ms=500, lease_intervals=30)


@pytest.fixture(scope="module")
def ns():
    why = netns.unavailable()
    if why is not None:
        pytest.skip(f"no network namespace for the NAT test: {why}")
    made = netns.create()
    try:
        yield made
    finally:
        netns.remove(made)


class NodeProcess:
    """``idlegrid node start --demo --relay ...`` running inside the namespace."""

    def __init__(self, ns: netns.Namespace, home: Path, *, registry: str, relay: str, token: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        token_file = home / "provider-token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDLEGRID_")}  # no service secrets
        env.update(IDLEGRID_HOME=str(home), IDLEGRID_LOG_FORMAT="json", IDLEGRID_LOG_LEVEL="info")
        self.home, self.log_path = home, home / "node.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = ns.exec_args(sys.executable, "-m", "idlegrid.cli.main", "node", "start", "--demo",
                           "--registry", registry, "--relay", relay, "--provider-token-file", str(token_file))
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def node_id(self) -> bytes | None:
        with contextlib.suppress(OSError, ValueError):
            return uuid.UUID((self.home / "node-id").read_text().strip()).bytes
        return None

    def stop(self) -> None:
        """SIGTERM (the agent drains, then stops its Triton); SIGKILL to the
        whole group if it does not end in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_WAIT_S)
        self._log.close()


@pytest.fixture(scope="module")
async def behind_nat(ns, config, db_url, tmp_path_factory):
    """The marketplace bound to the host's end of the pair, and a demo node
    in the namespace joined through the relay: (RestStack, NodeProcess)."""
    config = dataclasses.replace(config, bind_host=ns.host_ip)
    stack = await start_stack(config, db_url, parts=PARTS, provider=False, registry_settings=REGISTRY)
    node = None
    try:
        gw = stack.gateway_srv
        admin_key = (await gw.create_key(scope="admin"))[1]
        async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {admin_key}"}) as c:
            r = await c.post("/v1/admin/accounts", json={"kind": "provider", "name": f"nat-{uuid.uuid4().hex[:8]}"})
            assert r.status_code == 201, r.text
            provider = r.json()
            r = await c.post("/v1/admin/keys", json={"account_id": provider["account_id"], "scope": "provider"})
            assert r.status_code == 201, r.text
            provider_key = r.json()["key"]
        node = NodeProcess(ns, tmp_path_factory.mktemp("nat-node"), registry=stack.addrs["registry"],
                           relay=stack.addrs["relay"], token=provider["provider_token"])

        def ready():
            assert node.proc.poll() is None, f"the node exited ({node.proc.returncode}):\n{node.log_tail()}"
            node_id = node.node_id()
            info = stack.table.nodes.get(node_id) if node_id else None
            return node_id if info is not None and info.node.state == rpb.NODE_STATE_READY and info.models else None

        node_id = await eventually(ready, what="the node behind NAT to be READY", timeout_s=JOIN_WAIT_S)
        serving = gw.gw.backends.nodes.serving
        await eventually(lambda: serving("echo") and serving(LLM), what="the gateway to see the node")
        yield RestStack(stack, admin_key, provider["account_id"], provider["provider_id"], provider_key,
                        node_id), node
    finally:
        if node is not None:  # off the event loop: the draining node calls the registry served on it
            await asyncio.to_thread(node.stop)
        await stack.stop()


async def test_the_node_joins_through_the_relay_with_no_endpoint(behind_nat, ns):
    rest, _ = behind_nat
    node = rest.stack.table.nodes[rest.node_id].node
    assert node.endpoint == "", "a linked node has no direct endpoint"
    assert node.link.relay_addr == rest.stack.addrs["relay"]
    assert node.link.relay_addr.startswith(ns.host_ip + ":")


async def test_chat_streaming_chat_and_tensor_jobs_run_on_the_node_behind_nat(behind_nat):
    rest, _ = behind_nat
    _, key = await rest.consumer()
    async with rest.client(key) as h:
        r = await h.post("/v1/chat/completions", json={"model": LLM, "messages": CHAT, "max_tokens": 8,
                                                      "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.headers["x-idlegrid-node"] == rest.node_id.hex()
        assert r.json()["choices"][0]["message"]["content"]
        async with h.stream("POST", "/v1/chat/completions", json={
                "model": LLM, "messages": CHAT, "max_tokens": 8, "temperature": 0, "stream": True}) as s:
            assert s.status_code == 200
            assert s.headers["x-idlegrid-node"] == rest.node_id.hex()
            body = (await s.aread()).decode()
        assert body.count("data: ") >= 3 and body.endswith("data: [DONE]\n\n")
        r = await h.post("/v2/models/echo/infer", json={
            "inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [[1, 2]]}]})
        assert r.status_code == 200, r.text
        assert r.headers["x-idlegrid-node"] == rest.node_id.hex()
        assert r.json()["outputs"][0]["data"] == [1.0, 2.0]
    account = await rest.settled_account(key)
    assert account["spent_micros"] > 0


def _loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (::ffff:127.0.0.1)."""
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False  # "*" or "0.0.0.0" style wildcards are not loopback
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


async def test_nothing_inside_the_namespace_accepts_a_connection_from_outside(behind_nat, ns):
    """Every listener in the namespace (Triton's gRPC, HTTP and metrics) is on
    its loopback, and a connection from the root namespace to the
    namespace's address on each of those ports is refused."""
    listening = netns.listeners(ns)
    assert listening, "the demo Triton listens on something inside the namespace"
    outside = [(h, p) for h, p in listening if not _loopback(h)]
    assert not outside, f"listening beyond loopback inside the namespace: {outside}"
    for _, port in listening:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            with pytest.raises(ConnectionRefusedError):
                s.connect((ns.ns_ip, port))
