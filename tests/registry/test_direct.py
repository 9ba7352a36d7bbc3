"""Direct endpoints, the operator's opt-in: refused when off; when on, only
public addresses (private, loopback, link-local, metadata refused unless in
an allowed CIDR), resolved once and pinned (a DNS change afterwards moves
nothing), unique among live nodes. Hosts resolve through the registry's
resolver seam; verification is skipped, so nothing is dialled."""

from __future__ import annotations

import grpc
import pytest

from idlegrid.common.errors import ConfigError
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.registry.support import expect_status, registration

QUICK = dict(heartbeat_interval_ms=10_000, sweep_interval_ms=50, skip_verification=True)


class Dns:
    """The test's DNS: host → addresses, changed at will."""

    def __init__(self, **records: list[str]) -> None:
        self.records = {k.replace("_", "."): v for k, v in records.items()}
        self.asked: list[str] = []

    async def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        if host not in self.records:
            raise OSError("no such host")
        return self.records[host]


@pytest.fixture
async def direct(make_registry):
    h = await make_registry(RegistrySettings(direct_endpoints=True, **QUICK))
    h.dns = Dns(triton_example=["1.1.1.1"], inside_example=["10.0.0.7"], meta_example=["169.254.169.254"],
                twin_example=["1.1.1.1"])
    h.registry.use_resolver(h.dns)
    return h


async def test_direct_endpoints_are_refused_when_the_operator_has_not_enabled_them(make_registry):
    h = await make_registry(RegistrySettings(**QUICK))
    p = await h.provider()
    e = await expect_status(h.anon.RegisterNode(registration("1.1.1.1:8001"), metadata=p.md),
                            grpc.StatusCode.FAILED_PRECONDITION)
    assert "direct endpoints are disabled" in e.details() and "--relay" in e.details()
    assert not h.registry.nodes


@pytest.mark.parametrize("endpoint", [
    "10.0.0.7:8001", "192.168.1.20:8001", "172.16.0.1:8001", "127.0.0.1:8001", "[::1]:8001", "0.0.0.0:8001",
    "169.254.169.254:80", "169.254.10.10:8001", "[fd00:ec2::254]:80", "[fe80::1]:8001", "224.0.0.1:8001",
    "100.64.0.1:8001", "[::ffff:10.0.0.1]:8001", "inside.example:8001", "meta.example:80"])
async def test_private_loopback_link_local_and_metadata_addresses_are_refused(direct, endpoint):
    p = await direct.provider()
    e = await expect_status(direct.anon.RegisterNode(registration(endpoint), metadata=p.md),
                            grpc.StatusCode.FAILED_PRECONDITION)
    assert "must be public" in e.details()
    assert not direct.registry.nodes


async def test_an_allowed_cidr_admits_its_private_addresses_but_never_metadata(make_registry):
    h = await make_registry(RegistrySettings(direct_endpoints=True, direct_allow_cidrs=("10.0.0.0/8", "169.254.0.0/16"),
                                             **QUICK))
    p = await h.provider()
    await h.register(p, registration("10.0.0.7:8001"))
    await expect_status(h.anon.RegisterNode(registration("169.254.169.254:80"), metadata=p.md),
                        grpc.StatusCode.FAILED_PRECONDITION)


async def test_a_host_name_is_resolved_once_and_the_verified_ip_is_pinned(direct):
    p = await direct.provider()
    node = await direct.register(p, registration("triton.example:8001"))
    n = await direct.wait_state(node.node_id, pb.NODE_STATE_READY)
    assert n.endpoint == "1.1.1.1:8001" and direct.dns.asked == ["triton.example"]
    direct.dns.records["triton.example"] = ["10.0.0.99"]  # DNS changes after verification
    await direct.anon.Drain(pb.DrainRequest(node_id=node.node_id), metadata=node.md)
    n = await direct.node(node.node_id)
    assert n.endpoint == "1.1.1.1:8001" and direct.dns.asked == ["triton.example"]  # never resolved again


async def test_an_unresolvable_host_is_invalid(direct):
    p = await direct.provider()
    await expect_status(direct.anon.RegisterNode(registration("nowhere.example:8001"), metadata=p.md),
                        grpc.StatusCode.INVALID_ARGUMENT)


async def test_an_endpoint_is_unique_among_live_nodes_whatever_name_it_is_reached_by(direct):
    p = await direct.provider()
    first = await direct.register(p, registration("1.1.1.1:8001"))
    for same in ("1.1.1.1:8001", "triton.example:8001", "twin.example:8001"):
        e = await expect_status(direct.anon.RegisterNode(registration(same), metadata=p.md),
                                grpc.StatusCode.ALREADY_EXISTS)
        assert "1.1.1.1:8001" in e.details()
    await direct.register(p, registration("1.1.1.1:8002"))  # another port is another endpoint
    again = await direct.register(p, registration("1.1.1.1:8001", node_id=first.node_id))  # itself, again
    await direct.anon.Deregister(pb.DeregisterRequest(node_id=first.node_id), metadata=again.md)
    await direct.register(p, registration("triton.example:8001"))  # free once the first is offline


def test_the_policy_comes_from_the_environment_and_bad_values_name_their_variable():
    s = RegistrySettings.from_env({"IDLEGRID_REGISTRY_DIRECT_ENDPOINTS": "on",
                                   "IDLEGRID_REGISTRY_DIRECT_ALLOW_CIDRS": "10.0.0.0/8, fd00::/8",
                                   "IDLEGRID_REGISTRY_DIRECT_REQUIRE_TLS": "on"})
    assert s.direct_endpoints and s.direct_require_tls and s.direct_allow_cidrs == ("10.0.0.0/8", "fd00::/8")
    assert not RegistrySettings.from_env({}).direct_endpoints
    with pytest.raises(ConfigError, match="IDLEGRID_REGISTRY_DIRECT_ENDPOINTS"):
        RegistrySettings.from_env({"IDLEGRID_REGISTRY_DIRECT_ENDPOINTS": "yes"})
    with pytest.raises(ConfigError, match="not a CIDR"):
        RegistrySettings.from_env({"IDLEGRID_REGISTRY_DIRECT_ALLOW_CIDRS": "10.0.0.0/99"})
