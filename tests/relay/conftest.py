"""Relay fixtures: a registry (``registry``: the real one, in-process, on a
fresh database), one relay replica (``relay``), and a node linked through it
in front of the session's shared demo Triton (``node``)."""

from __future__ import annotations

import pytest

from tests.relay import support
from tests.relay.registry import RegistryFace


@pytest.fixture(scope="module")
async def registry(config, db_url):
    face = await RegistryFace.start(config, db_url)
    yield face
    await face.stop()


@pytest.fixture(scope="module")
async def relay(config, registry):
    running = await support.start_relay(config, registry.addr)
    yield running
    await running.stop(0)


@pytest.fixture(scope="module")
async def node(relay, registry, triton):
    node_id, token = await registry.node()
    link = await support.link_node([relay], node_id, token, triton.grpc_url)
    await link.wait_linked()
    await registry.wait_ready(node_id)  # verified through the link: no canary call in flight
    yield link
    await link.stop()
