"""Offline checks of the one-host deployment: compose.yaml runs every service
the code defines after the migrations, finds the others through
configuration, and documents its variables; the control-plane image runs the
base package as a non-root user."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from idlegrid.common.config import Config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVICES = tuple(Config.from_env({}).ports)
GRPC_SERVICES = tuple(s for s in SERVICES if s != "gateway")
HEALTHCHECK = "/usr/local/lib/idlegrid/healthcheck.py"


_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def _compose_variables() -> set[str]:
    return {m.group(1) for m in _INTERPOLATION.finditer((DEPLOY / "compose.yaml").read_text())}


def _env_example() -> dict[str, str]:
    found = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        line = line.lstrip("# ").strip()
        name, eq, value = line.partition("=")
        if eq and re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            found[name] = value
    return found


def _compose() -> dict:
    """compose.yaml with ${VAR:-default} and ${VAR:?error} interpolated, the
    required variables set to stand-in values."""

    def sub(m: re.Match) -> str:
        return m.group(3) if m.group(2) == "-" else f"<{m.group(1).lower()}>"

    return yaml.safe_load(_INTERPOLATION.sub(sub, (DEPLOY / "compose.yaml").read_text()))


def test_compose_variables_are_all_in_the_env_example():
    missing = _compose_variables() - _env_example().keys()
    assert not missing, f"deploy/.env.example does not document {sorted(missing)}"


def _depends_on_migrate(services: dict, name: str, seen: frozenset = frozenset()) -> bool:
    deps = services[name].get("depends_on", {})
    if deps.get("migrate", {}).get("condition") == "service_completed_successfully":
        return True
    return any(_depends_on_migrate(services, d, seen | {name}) for d in deps if d not in seen)


def test_compose_runs_every_service_after_the_migrations():
    services = _compose()["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for service in SERVICES:
        assert service in services, f"compose.yaml has no {service}"
        spec = services[service]
        assert spec["command"] == [service, "serve"]
        assert spec["healthcheck"]["test"][-2:] == [HEALTHCHECK, service]
        assert spec.get("read_only") is True and "/tmp" in spec["tmpfs"]
        assert _depends_on_migrate(services, service), f"{service} may start before the migrations"
        for dep, cond in spec.get("depends_on", {}).items():
            if dep in SERVICES:
                assert cond["condition"] == "service_healthy", f"{service} waits for {dep} to be healthy"


def test_compose_services_find_each_other_through_configuration():
    services = _compose()["services"]
    for service in SERVICES:
        env = {k: str(v) for k, v in services[service]["environment"].items()}
        config = Config.from_env(env)
        assert config.bind_host == "0.0.0.0"
        for other in GRPC_SERVICES:
            host, _, port = config.addrs[other].rpartition(":")
            assert host in services, f"{service}: {other} at {config.addrs[other]}: no such compose service"
            assert int(port) == config.ports[other]


def test_control_plane_image_is_the_base_package_run_as_a_non_root_user():
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "FROM python:3.11-slim" in text or "PYTHON_IMAGE=python:3.11-slim" in text
    assert 'ENTRYPOINT ["idlegrid"]' in lines
    assert "[node]" not in text and "'.[node" not in text, "the control plane does not need the node extra"
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0", "USER 0:0")
    assert "HOME=/tmp" in text and "IDLEGRID_HOME=/tmp/" in text, "writes must land in /tmp"


def test_compose_publishes_the_relay_for_node_agents():
    """Nodes dial out to the relay: compose publishes it and names the
    address it advertises for its links."""
    relay = _compose()["services"]["relay"]
    assert relay["command"] == ["relay", "serve"]
    assert any(str(p).endswith(f":{Config.from_env({}).ports['relay']}") for p in relay["ports"])
    assert relay["environment"]["IDLEGRID_RELAY_ADVERTISE_ADDR"] == "relay:50055"


def test_node_image_binds_triton_to_loopback_and_joins_through_the_relay():
    """Nothing in the provider's node container listens on its network
    interfaces: every Triton port is on loopback and the agent dials the
    relay; the image exposes no port."""
    script = (DEPLOY / "node-entrypoint.sh").read_text()
    triton = script[script.index("tritonserver --model-repository"):script.index("triton_pid=$!")]
    for flag in ("--grpc-address=127.0.0.1", "--http-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in triton, f"tritonserver without {flag}"
    agent = script[script.index("idlegrid node start"):script.index("agent_pid=$!")]
    assert "--triton-url 127.0.0.1:8001" in agent and '--relay "$relay"' in agent
    assert 'relay="${IDLEGRID_RELAY_ADDR:?' in script
    dockerfile = [line.strip() for line in (DEPLOY / "node.Dockerfile").read_text().splitlines()]
    assert not [line for line in dockerfile if line.startswith("EXPOSE")], "the node needs no inbound port"


# -- least privilege: each container its own credentials ---------------------

SCHEMAS = ("ledger", "registry", "metering", "gateway")  # idlegrid.cli.migrate.SCHEMAS


def _env(spec: dict) -> dict[str, str]:
    return {k: str(v) for k, v in spec.get("environment", {}).items()}


def test_no_container_has_the_operator_token():
    from idlegrid.common.identities import OPERATOR

    for name, spec in _compose()["services"].items():
        env = _env(spec)
        assert "IDLEGRID_SERVICE_TOKEN" not in env, f"{name}: the operator's token is never a container's"
        assert f"IDLEGRID_TOKEN_{OPERATOR.upper()}" not in env, f"{name}: the operator's token"
    assert "IDLEGRID_SERVICE_TOKEN" not in _compose_variables()


def test_each_service_has_its_own_token_and_its_callers_only():
    """Token mode: a service's own token, and the tokens of the callers its
    server accepts (idlegrid.common.identities); the same variable on both
    sides, so caller and server agree."""
    from idlegrid.common.identities import OPERATOR, accepted

    services = _compose()["services"]
    for service in SERVICES:
        env = _env(services[service])
        want = {service} | (accepted(service) - {OPERATOR})
        tokens = {k.removeprefix("IDLEGRID_TOKEN_").lower(): v for k, v in env.items() if k.startswith("IDLEGRID_TOKEN_")}
        assert set(tokens) == want, f"{service}: tokens {sorted(tokens)}, wants {sorted(want)}"
        for identity, value in tokens.items():
            assert value == f"<idlegrid_token_{identity}>", f"{service}: IDLEGRID_TOKEN_{identity.upper()} = {value}"
        config = Config.from_env(env)
        assert config.auth == "token" and set(config.tokens) == want
        assert config.migrate_on_start is False, f"{service}: IDLEGRID_MIGRATE_ON_START must be 0"
    for name in ("migrate", "postgres"):
        assert not [k for k in _env(services[name]) if k.startswith("IDLEGRID_TOKEN_")], f"{name} calls no service"


def test_each_service_connects_as_its_own_role_and_only_migrate_as_admin():
    from urllib.parse import urlsplit

    from idlegrid.common.db import role_name

    services = _compose()["services"]
    admin = services["postgres"]["environment"]["POSTGRES_USER"]
    for service in SERVICES:
        env = _env(services[service])
        assert not [k for k in env if k.startswith("IDLEGRID_DB_PASSWORD_")], f"{service}: role passwords are migrate's"
        if service not in SCHEMAS:
            assert "IDLEGRID_DATABASE_URL" not in env, f"{service} holds no state: no database URL"
            continue
        url = urlsplit(env["IDLEGRID_DATABASE_URL"])
        assert url.username == role_name(service) != admin, f"{service} connects as {url.username}"
        assert url.password == f"<idlegrid_db_password_{service}>", f"{service}: not its role's password"
    migrate = _env(services["migrate"])
    assert urlsplit(migrate["IDLEGRID_DATABASE_URL"]).username == admin
    assert urlsplit(migrate["IDLEGRID_DATABASE_URL"]).password == "<postgres_password>"
    for schema in SCHEMAS:
        assert migrate[f"IDLEGRID_DB_PASSWORD_{schema.upper()}"] == f"<idlegrid_db_password_{schema}>"
    for name, spec in services.items():
        if name not in ("migrate", "postgres"):
            assert "<postgres_password>" not in str(spec), f"{name}: has the admin password"
