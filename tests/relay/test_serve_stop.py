"""`idlegrid relay serve` on SIGTERM: the calls in flight may finish, but idle
links are closed at once (their agents move to another replica and the
registry hears DetachLink) rather than held for the whole shutdown grace."""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path

import pytest

from idlegrid.bench.kit import free_port, spawn, wait_healthy
from idlegrid.bench.relay_standin import StandInRegistry
from idlegrid.common.config import Config
from idlegrid.common.identities import RELAY
from idlegrid.node.link import NodeLink
from tests.harness.polling import eventually

pytestmark = pytest.mark.slow

ROOT_TOKEN = "relay-serve-stop-root-token"


async def test_sigterm_closes_idle_links_at_once_and_exits(triton):
    home = Path(tempfile.mkdtemp(prefix="idlegrid-relay-stop-"))
    registry = StandInRegistry(Config.from_env({"IDLEGRID_SERVICE_TOKEN": ROOT_TOKEN,
                                                "IDLEGRID_HOME": str(home)}).token_for(RELAY))
    registry_addr = await registry.start()
    port = free_port()
    relay = spawn(["relay", "serve"], env={
        "IDLEGRID_HOME": str(home), "IDLEGRID_SERVICE_TOKEN": ROOT_TOKEN, "IDLEGRID_REGISTRY_ADDR": registry_addr,
        "IDLEGRID_RELAY_PORT": str(port), "IDLEGRID_SHUTDOWN_GRACE_S": "3600", "IDLEGRID_LOG_LEVEL": "warning"},
        log_path=home / "relay.log")
    node_id, token = registry.node()
    link = NodeLink(relay_addrs=[f"127.0.0.1:{port}"], node_id=node_id, node_token=token,
                    triton_url=triton.grpc_url, backoff_initial_s=0.05, backoff_max_s=0.5)
    try:
        await wait_healthy(f"127.0.0.1:{port}", proc=relay)
        await link.start()
        await link.wait_linked()
        relay.send_signal(signal.SIGTERM)
        # With a grace of an hour, only closing idle links at once lets it exit within the wait.
        await eventually(lambda: relay.poll() is not None, what="the relay to exit after SIGTERM")
        assert relay.returncode == 0, (home / "relay.log").read_text()[-2000:]
        assert node_id in registry.detached  # the registry heard the link go
    finally:
        await link.stop()
        if relay.poll() is None:
            relay.kill()
        await registry.stop()
