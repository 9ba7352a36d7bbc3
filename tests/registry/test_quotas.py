"""Per-provider registration quotas: a provider's live nodes and its
registrations per minute are bounded; the refusal is RESOURCE_EXHAUSTED and
names the quota; other providers are not affected, and nothing is left of a
refused registration."""

from __future__ import annotations

import grpc
import pytest

from idlegrid.common.errors import ConfigError
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.registry.conftest import LOOPBACK
from tests.registry.support import expect_status, registration

QUICK = {"heartbeat_interval_ms": 10_000, "sweep_interval_ms": 50, "load_report_interval_ms": 50,
         "skip_verification": True, **LOOPBACK}


def test_the_quota_defaults_are_documented_and_bounded():
    s = RegistrySettings()
    assert s.provider_nodes_max >= 1 and s.provider_registrations_per_minute_max >= 1
    assert 1 <= s.verifications_per_provider_max <= s.verifications_max
    env = RegistrySettings.from_env({"IDLEGRID_REGISTRY_PROVIDER_NODES_MAX": "5",
                                     "IDLEGRID_REGISTRY_PROVIDER_REGISTRATIONS_PER_MINUTE_MAX": "7"})
    assert (env.provider_nodes_max, env.provider_registrations_per_minute_max) == (5, 7)
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match="PROVIDER_NODES_MAX|provider_nodes_max"):
            RegistrySettings.from_env({"IDLEGRID_REGISTRY_PROVIDER_NODES_MAX": bad})


async def test_a_provider_over_its_live_node_quota_is_refused_naming_it(make_registry):
    reg = await make_registry(RegistrySettings(provider_nodes_max=2, **QUICK))
    a, b = await reg.provider(), await reg.provider()
    first = await reg.register(a, registration())
    await reg.register(a, registration())
    e = await expect_status(reg.anon.RegisterNode(registration(), metadata=a.md), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "provider_nodes_max" in e.details()
    listed = await reg.admin.ListNodes(pb.ListNodesRequest())
    assert len(listed.nodes) == 2  # the refused registration left nothing
    await reg.register(b, registration())  # another provider is not affected
    again = await reg.register(a, registration(node_id=first.node_id))  # a live node again: no new node
    await reg.anon.Deregister(pb.DeregisterRequest(node_id=again.node_id), metadata=a.md)
    await reg.register(a, registration())  # room again


async def test_a_provider_over_its_registrations_per_minute_is_refused_naming_it(make_registry):
    reg = await make_registry(RegistrySettings(provider_registrations_per_minute_max=3, **QUICK))
    a, b = await reg.provider(), await reg.provider()
    node = await reg.register(a, registration())
    await reg.register(a, registration(node_id=node.node_id))  # registering again counts too
    await reg.register(a, registration())
    e = await expect_status(reg.anon.RegisterNode(registration(), metadata=a.md), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "provider_registrations_per_minute_max" in e.details()
    await reg.register(b, registration())
