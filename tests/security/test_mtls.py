"""Production identities: under IDLEGRID_AUTH=mtls the caller is the
verified client certificate's spiffe://idlegrid/<identity> SAN (or its CN),
with a throwaway CA made here. A real ledger, real TLS."""

from __future__ import annotations

import uuid

import grpc
import pytest

from idlegrid.common.auth import identity_in_cert
from idlegrid.common.channel import open_channel
from idlegrid.common.config import Config
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.ledger.v1 import ledger_pb2_grpc
from tests.harness import new_database
from tests.security.ca import CA

UNAUTH, DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


def test_the_identity_comes_from_the_spiffe_id_then_the_cn():
    ssl = {"transport_security_type": [b"ssl"]}
    assert identity_in_cert({**ssl, "peer_spiffe_id": [b"spiffe://idlegrid/scheduler"],
                             "x509_common_name": [b"gateway"]}) == "scheduler"
    assert identity_in_cert({**ssl, "x509_subject_alternative_name": [b"localhost", b"spiffe://idlegrid/metering"]}) \
        == "metering"
    assert identity_in_cert({**ssl, "x509_common_name": [b"gateway"]}) == "gateway"
    assert identity_in_cert({**ssl, "peer_spiffe_id": [b"spiffe://idlegrid/root"],
                             "x509_common_name": [b"gateway"]}) is None  # a SAN naming no identity wins
    assert identity_in_cert({**ssl, "x509_common_name": [b"intruder"]}) is None
    assert identity_in_cert({**ssl}) is None  # no client certificate
    assert identity_in_cert({"transport_security_type": [b"insecure"], "x509_common_name": [b"gateway"]}) is None


def _config(home, ca: CA, leaf) -> Config:
    return Config.from_env({"IDLEGRID_HOME": str(home), "IDLEGRID_AUTH": "mtls", "IDLEGRID_TLS_CA": str(ca.path),
                            "IDLEGRID_TLS_CERT": str(leaf.cert), "IDLEGRID_TLS_KEY": str(leaf.key)})


@pytest.fixture(scope="module")
async def mtls(pg_admin_url, tmp_path_factory):
    from idlegrid.ledger import service as ledger_service

    home = tmp_path_factory.mktemp("mtls")
    ca = CA(home)
    config = _config(home, ca, ca.leaf("ledger", spiffe="spiffe://idlegrid/ledger"))
    srv = await ledger_service.start(config, port=0, database_url=await new_database(pg_admin_url))
    yield home, ca, f"localhost:{srv.port}"
    await srv.stop(0)


async def _reserve_code(config: Config | None, addr: str, creds=None) -> grpc.StatusCode:
    ch = open_channel(addr, token=None, config=config) if creds is None else grpc.aio.secure_channel(addr, creds)
    async with ch:
        req = lpb.ReserveRequest(job_id=uuid.uuid4().bytes, consumer_account_id=uuid.uuid4().bytes,
                                 amount=1, timeout_s=60)
        try:
            await ledger_pb2_grpc.LedgerServiceStub(ch).Reserve(req, timeout=10)
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


async def test_the_certificate_names_the_caller(mtls):
    home, ca, addr = mtls
    scheduler = _config(home, ca, ca.leaf("scheduler", spiffe="spiffe://idlegrid/scheduler"))
    assert await _reserve_code(scheduler, addr) not in (UNAUTH, DENIED, grpc.StatusCode.UNAVAILABLE)
    relay = _config(home, ca, ca.leaf("relay"))  # CN only
    assert await _reserve_code(relay, addr) == DENIED
    gateway = _config(home, ca, ca.leaf("gw", spiffe="spiffe://idlegrid/gateway"))
    assert await _reserve_code(gateway, addr) == DENIED
    stranger = _config(home, ca, ca.leaf("intruder"))
    assert await _reserve_code(stranger, addr) == UNAUTH


async def test_no_client_certificate_or_another_ca_is_refused(mtls, tmp_path):
    home, ca, addr = mtls
    server_only = grpc.ssl_channel_credentials(root_certificates=ca.path.read_bytes())
    assert await _reserve_code(None, addr, server_only) == grpc.StatusCode.UNAVAILABLE  # handshake refused
    other = CA(tmp_path, "other CA")
    forged = other.leaf("scheduler", spiffe="spiffe://idlegrid/scheduler")
    creds = grpc.ssl_channel_credentials(root_certificates=ca.path.read_bytes(),
                                         private_key=forged.key.read_bytes(), certificate_chain=forged.cert.read_bytes())
    assert await _reserve_code(None, addr, creds) == grpc.StatusCode.UNAVAILABLE


async def test_a_bearer_token_means_nothing_under_mtls(mtls):
    """A token (even a once-valid one) is no identity here: only certificates are."""
    home, ca, addr = mtls
    relay = _config(home, ca, ca.leaf("relay2", spiffe="spiffe://idlegrid/relay"))
    async with open_channel(addr, token="a-token-of-any-sort-at-all", config=relay) as ch:
        req = lpb.ReserveRequest(job_id=uuid.uuid4().bytes, consumer_account_id=uuid.uuid4().bytes,
                                 amount=1, timeout_s=60)
        with pytest.raises(grpc.RpcError) as e:
            await ledger_pb2_grpc.LedgerServiceStub(ch).Reserve(req, timeout=10)
        assert e.value.code() == DENIED


async def test_node_agents_reach_the_registry_without_a_certificate_but_service_methods_need_one(
        pg_admin_url, tmp_path):
    """Node agents have no cluster certificate: under mTLS the registry (like
    the relay) gives them a port of their own, TLS without client
    certificates. Node methods authenticate there with node or provider
    tokens; every service method still needs a certificate identity, and the
    main port still refuses a client without a certificate."""
    from idlegrid.registry import service as registry_service
    from idlegrid.registry.settings import RegistrySettings
    from idlegrid.registry.v1 import registry_pb2 as rpb
    from idlegrid.registry.v1 import registry_pb2_grpc

    ca = CA(tmp_path)
    leaf = ca.leaf("registry", spiffe="spiffe://idlegrid/registry")
    config = Config.from_env({"IDLEGRID_HOME": str(tmp_path), "IDLEGRID_AUTH": "mtls", "IDLEGRID_TLS_CA": str(ca.path),
                              "IDLEGRID_TLS_CERT": str(leaf.cert), "IDLEGRID_TLS_KEY": str(leaf.key),
                              "IDLEGRID_REGISTRY_NODE_PORT": "0"})
    srv = await registry_service.start(config, port=0, database_url=await new_database(pg_admin_url),
                                       settings=RegistrySettings())
    try:
        addr, node_addr = f"localhost:{srv.port}", f"localhost:{srv.node_port}"
        server_only = grpc.ssl_channel_credentials(root_certificates=ca.path.read_bytes())
        async with grpc.aio.secure_channel(addr, server_only) as ch:  # the main port: no certificate, no call
            with pytest.raises(grpc.RpcError) as e:
                await registry_pb2_grpc.RegistryServiceStub(ch).RegisterNode(rpb.RegisterNodeRequest(), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.secure_channel(node_addr, server_only) as ch:
            stub = registry_pb2_grpc.RegistryServiceStub(ch)
            with pytest.raises(grpc.RpcError) as e:  # past the handshake: refused for its token
                await stub.RegisterNode(rpb.RegisterNodeRequest(), timeout=10,
                                        metadata=(("authorization", "Bearer not-a-node-token"),))
            assert e.value.code() == UNAUTH
            with pytest.raises(grpc.RpcError) as e:  # a service method with no certificate identity
                await stub.ListNodes(rpb.ListNodesRequest(), timeout=10)
            assert e.value.code() == UNAUTH
        gateway = _config(tmp_path, ca, ca.leaf("gateway", spiffe="spiffe://idlegrid/gateway"))
        async with open_channel(addr, token=None, config=gateway) as ch:  # the main port, with a certificate
            await registry_pb2_grpc.RegistryServiceStub(ch).ListNodes(rpb.ListNodesRequest(), timeout=10)
    finally:
        await srv.stop(0)


async def test_the_relay_forwards_for_certificate_identities_allowed_to_reach_nodes(tmp_path):
    """Under mTLS the relay names its caller by certificate: the scheduler
    gets past authentication (NOT_FOUND: no such node holds a link here);
    the gateway, which may not reach nodes, is PERMISSION_DENIED."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from idlegrid.relay import service as relay_service

    ca = CA(tmp_path)
    config = _config(tmp_path, ca, ca.leaf("relay", spiffe="spiffe://idlegrid/relay"))
    srv = await relay_service.start(config, port=0, registry_addr="127.0.0.1:9")
    try:
        addr = f"localhost:{srv.port}"
        node = (("idlegrid-node-id", "00" * 16),)
        for who, code in (("scheduler", grpc.StatusCode.NOT_FOUND), ("gateway", DENIED)):
            caller = _config(tmp_path, ca, ca.leaf(who, spiffe=f"spiffe://idlegrid/{who}"))
            async with open_channel(addr, token=None, config=caller) as ch:
                with pytest.raises(grpc.RpcError) as e:
                    await service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
                        service_pb2.ModelInferRequest(model_name="echo"), metadata=node, timeout=10)
                assert e.value.code() == code, who
    finally:
        await srv.stop(0)
