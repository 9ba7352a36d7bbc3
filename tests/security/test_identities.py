"""Per-service identities on one machine: each method accepts only the
identities the table in idlegrid.common.identities names; an unknown, empty
or missing credential is UNAUTHENTICATED, a known caller on a method not
meant for it PERMISSION_DENIED. Against a real ledger and registry."""

from __future__ import annotations

import os
import stat
import uuid

import grpc
import pytest

from idlegrid.common import identities
from idlegrid.common.auth import bearer
from idlegrid.common.config import Config
from idlegrid.common.errors import ConfigError
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.ledger.v1 import ledger_pb2_grpc
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.registry.v1 import registry_pb2_grpc
from tests.harness import new_database

UNAUTH, DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
LEDGER = "/idlegrid.ledger.v1.LedgerService/"


def test_the_table_gives_money_methods_to_their_one_service():
    """Only the scheduler reserves and releases; settlement is the scheduler's
    and metering's; top-ups and payouts are the gateway's; the relay and
    nodes reach no ledger method at all."""
    op = identities.OPERATOR
    assert identities.allowed(LEDGER + "Reserve") == {"scheduler", op}
    assert identities.allowed(LEDGER + "Release") == {"scheduler", op}
    assert identities.allowed(LEDGER + "Settle") == {"scheduler", "metering", op}
    assert identities.allowed(LEDGER + "TopUp") == {"gateway", op}
    assert identities.allowed(LEDGER + "Payout") == {"gateway", op}
    ledger_callers = set().union(*(w for m, w in identities.ALLOWED.items() if m.startswith(LEDGER)))
    assert "relay" not in ledger_callers and identities.NODE not in ledger_callers
    assert identities.allowed("/idlegrid.ledger.v1.LedgerService/NoSuchMethod") == frozenset()


def test_every_method_of_every_service_is_in_the_table():
    """A method the table forgets would be refused to everyone: the table
    covers each method of each idlegrid service."""
    from google.protobuf import descriptor_pool

    import idlegrid.ledger.v1.ledger_pb2  # noqa: F401
    import idlegrid.metering.v1.metering_pb2  # noqa: F401
    import idlegrid.registry.v1.registry_pb2  # noqa: F401
    import idlegrid.relay.v1.relay_pb2  # noqa: F401
    import idlegrid.scheduler.v1.scheduler_pb2  # noqa: F401

    pool = descriptor_pool.Default()
    for svc in ("ledger.v1.LedgerService", "registry.v1.RegistryService", "scheduler.v1.SchedulerService",
                "metering.v1.MeteringService", "relay.v1.RelayService"):
        for m in pool.FindServiceByName(f"idlegrid.{svc}").methods:
            assert f"/idlegrid.{svc}/{m.name}" in identities.ALLOWED, m.full_name


def test_each_identity_has_its_own_token_file_0600(tmp_path):
    config = Config.from_env({"IDLEGRID_HOME": str(tmp_path)})
    tokens = {i: config.token_for(i) for i in identities.IDENTITIES}
    assert len(set(tokens.values())) == len(tokens)
    for i, t in tokens.items():
        path = tmp_path / "tokens" / i
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert config.token_for(i) == t  # kept, not remade


@pytest.mark.parametrize("content", ["", "\n", "short"])
def test_an_empty_or_short_token_file_is_refused_not_used(tmp_path, content):
    """Today's hole: an empty token file authenticated everyone. Now it is a
    clear error naming the file, and nothing is rewritten behind the operator."""
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "ledger").write_text(content)
    config = Config.from_env({"IDLEGRID_HOME": str(tmp_path)})
    with pytest.raises(ConfigError, match="tokens/ledger"):
        config.token_for("ledger")
    with pytest.raises(ConfigError, match="tokens/ledger"):
        config.guard(["ledger"])
    assert (tmp_path / "tokens" / "ledger").read_text() == content


def test_an_empty_token_in_the_environment_is_not_a_credential(tmp_path):
    """IDLEGRID_TOKEN_X= (empty) is unset; a short one is an error with its name."""
    config = Config.from_env({"IDLEGRID_HOME": str(tmp_path), "IDLEGRID_TOKEN_GATEWAY": ""})
    assert len(config.token_for("gateway")) >= 32
    config = Config.from_env({"IDLEGRID_HOME": str(tmp_path), "IDLEGRID_TOKEN_GATEWAY": "abc"})
    with pytest.raises(ConfigError, match="IDLEGRID_TOKEN_GATEWAY"):
        config.token_for("gateway")


def test_mtls_without_certificates_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="IDLEGRID_AUTH=mtls"):
        Config.from_env({"IDLEGRID_HOME": str(tmp_path), "IDLEGRID_AUTH": "mtls"})
    with pytest.raises(ConfigError, match="IDLEGRID_AUTH"):
        Config.from_env({"IDLEGRID_HOME": str(tmp_path), "IDLEGRID_AUTH": "maybe"})


@pytest.fixture(scope="module")
async def servers(pg_admin_url, tmp_path_factory):
    """A ledger and a registry whose tokens live in a fresh home (no shared token)."""
    from idlegrid.ledger import service as ledger_service
    from idlegrid.registry import service as registry_service

    home = tmp_path_factory.mktemp("identities")
    config = Config.from_env({"IDLEGRID_HOME": str(home)})
    url = await new_database(pg_admin_url)
    lsrv = await ledger_service.start(config, port=0, database_url=url)
    rsrv = await registry_service.start(config, port=0, database_url=url)
    yield config, lsrv.port, rsrv.port
    await rsrv.stop(0)
    await lsrv.stop(0)


async def _code(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def _reserve() -> lpb.ReserveRequest:
    return lpb.ReserveRequest(job_id=uuid.uuid4().bytes, consumer_account_id=uuid.uuid4().bytes,
                              amount=1, timeout_s=60)


async def test_the_ledger_refuses_callers_the_table_does_not_name(servers):
    config, lport, _ = servers
    tok = config.token_for
    async with grpc.aio.insecure_channel(f"127.0.0.1:{lport}") as ch:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        top_up = lpb.TopUpRequest(account_id=uuid.uuid4().bytes, amount=1, idempotency_key="k")
        # Unknown, empty, missing: UNAUTHENTICATED.
        assert await _code(stub.Reserve(_reserve(), metadata=(("authorization", "Bearer "),))) == UNAUTH
        assert await _code(stub.Reserve(_reserve(), metadata=(("authorization", ""),))) == UNAUTH
        assert await _code(stub.Reserve(_reserve())) == UNAUTH
        assert await _code(stub.Reserve(_reserve(), metadata=bearer("x" * 43))) == UNAUTH
        # The relay's token and a node's token are no one to the ledger.
        assert await _code(stub.Reserve(_reserve(), metadata=bearer(tok("relay")))) == UNAUTH
        assert await _code(stub.GetAccountBalances(lpb.GetAccountBalancesRequest(),
                                                   metadata=bearer(tok("relay")))) == UNAUTH
        # Known callers on the wrong method: PERMISSION_DENIED.
        assert await _code(stub.TopUp(top_up, metadata=bearer(tok("scheduler")))) == DENIED
        assert await _code(stub.TopUp(top_up, metadata=bearer(tok("metering")))) == DENIED
        assert await _code(stub.Reserve(_reserve(), metadata=bearer(tok("gateway")))) == DENIED
        assert await _code(stub.Reserve(_reserve(), metadata=bearer(tok("metering")))) == DENIED
        # The right caller gets past the policy (to a domain answer about an unknown account).
        assert await _code(stub.Reserve(_reserve(), metadata=bearer(tok("scheduler")))) not in (UNAUTH, DENIED)
        assert await _code(stub.TopUp(top_up, metadata=bearer(tok("gateway")))) not in (UNAUTH, DENIED)


async def test_node_tokens_reach_only_the_registry_node_methods(servers):
    """The registry's admin methods take the gateway, not the relay or a
    node token; its node methods take node tokens (checked by the handler)."""
    config, _, rport = servers
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rport}") as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        req = rpb.CreateProviderRequest(name="p-ident", ledger_account_id=uuid.uuid4().bytes)
        assert await _code(stub.CreateProvider(req, metadata=bearer(config.token_for("relay")))) == DENIED
        assert await _code(stub.CreateProvider(req, metadata=bearer("nodetoken-" + "a" * 32))) == UNAUTH
        assert await _code(stub.CreateProvider(req, metadata=bearer(config.token_for("gateway")))) == grpc.StatusCode.OK
        attach = rpb.AttachLinkRequest(node_id=uuid.uuid4().bytes)
        assert await _code(stub.AttachLink(attach, metadata=bearer(config.token_for("gateway")))) == DENIED
        assert await _code(stub.AttachLink(attach, metadata=bearer(config.token_for("relay")))) not in (UNAUTH, DENIED)


async def test_a_server_with_a_damaged_token_file_does_not_start(pg_admin_url, tmp_path):
    """An empty token file of an identity the ledger accepts: the ledger
    refuses to start with the file's name and leaves nothing running."""
    from idlegrid.ledger import service as ledger_service

    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "scheduler").write_text("")
    config = Config.from_env({"IDLEGRID_HOME": str(tmp_path)})
    url = await new_database(pg_admin_url)
    with pytest.raises(ConfigError, match="tokens/scheduler"):
        await ledger_service.start(config, port=0, database_url=url)
