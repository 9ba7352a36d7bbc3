"""Configuration, read once at start-up from environment variables.

Every setting has a documented default; a required value that is missing
fails with its name. Nothing else in the code reads ``os.environ``.

| variable | default | meaning |
|---|---|---|
| IDLEGRID_HOME | ./.idlegrid | data directory (embedded database, demo keys) |
| IDLEGRID_DATABASE_URL | (unset) | PostgreSQL URL; unset = embedded PostgreSQL in $IDLEGRID_HOME/pg |
| IDLEGRID_AUTH | token | how services know each other: token (one machine: a token per identity) or mtls (the identity in each client certificate; needs IDLEGRID_TLS_CERT/KEY/CA) |
| IDLEGRID_TOKEN_<IDENTITY> | (unset) | the token of one identity (LEDGER, REGISTRY, SCHEDULER, METERING, GATEWAY, RELAY, OPERATOR; see idlegrid.common.identities); unset = one kept in $IDLEGRID_HOME/tokens/<identity> |
| IDLEGRID_SERVICE_TOKEN | (unset) | tests and benchmarks only, never in a deployment: the operator's token, from which every other identity's token is derived (HMAC) when not set on its own |
| IDLEGRID_DB_PASSWORD_<SCHEMA> | (unset) | `idlegrid migrate` only: the password it sets on the role idlegrid_<schema> (LEDGER, REGISTRY, METERING, GATEWAY); unset = the role's password is left as it is |
| IDLEGRID_MIGRATE_ON_START | 1 | 1: each service migrates its schema at start (one machine); 0: only `idlegrid migrate` runs DDL (production) |
| IDLEGRID_LOG_FORMAT | auto | json, console, or auto (console on a TTY) |
| IDLEGRID_LOG_LEVEL | info | debug, info, warning, error |
| IDLEGRID_BIND_HOST | 127.0.0.1 | interface the services listen on |
| IDLEGRID_LEDGER_PORT | 50051 | ledger gRPC port |
| IDLEGRID_REGISTRY_PORT | 50052 | registry gRPC port |
| IDLEGRID_SCHEDULER_PORT | 50053 | scheduler gRPC port |
| IDLEGRID_METERING_PORT | 50054 | metering gRPC port |
| IDLEGRID_GATEWAY_PORT | 8080 | gateway REST port |
| IDLEGRID_LEDGER_ADDR | 127.0.0.1:$IDLEGRID_LEDGER_PORT | where clients find the ledger |
| IDLEGRID_REGISTRY_ADDR | 127.0.0.1:$IDLEGRID_REGISTRY_PORT | where clients find the registry |
| IDLEGRID_SCHEDULER_ADDR | 127.0.0.1:$IDLEGRID_SCHEDULER_PORT | where clients find the scheduler |
| IDLEGRID_METERING_ADDR | 127.0.0.1:$IDLEGRID_METERING_PORT | where clients find metering |
| IDLEGRID_RELAY_ADVERTISE_ADDR | (the relay's bind host:port) | where the marketplace reaches this relay replica (recorded with each link) |
| IDLEGRID_{REGISTRY,RELAY}_NODE_PORT | registry/relay port + 1000 | under IDLEGRID_AUTH=mtls: the port where node agents (no cluster certificate) reach the registry and the relays |
| IDLEGRID_TLS_CERT / IDLEGRID_TLS_KEY | (unset) | PEM files: serve gRPC over TLS when both are set |
| IDLEGRID_TLS_CA | (unset) | PEM file: clients verify servers with it (TLS on when set) |
| IDLEGRID_DB_POOL_MAX | 10 | connections per service pool |
| IDLEGRID_PLATFORM_FEE_BPS | 1000 | platform fee in basis points (10%) |
| IDLEGRID_SHUTDOWN_GRACE_S | 30 | on SIGTERM, how long in-flight calls may finish |
| IDLEGRID_GATEWAY_URL | (unset) | the CLI's gateway (default: the one in $IDLEGRID_HOME/demo.json) |
| IDLEGRID_API_KEY | (unset) | the CLI's API key (default: the demo key for the command) |
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from idlegrid.common.errors import ConfigError
from idlegrid.common.identities import IDENTITIES, OPERATOR

_AUTH_MODES = ("token", "mtls")
_SCHEMAS = ("ledger", "registry", "metering", "gateway")  # the services that own a schema

_LOG_FORMATS = ("auto", "json", "console")
_LOG_LEVELS = ("debug", "info", "warning", "error")


def env_int(env: Mapping[str, str], name: str, default: int, *, lo: int, hi: int) -> int:
    """An integer setting within [lo, hi]; ``default`` when unset."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "") or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Config:
    home: Path
    database_url: str | None
    service_token: str | None
    log_format: str = "auto"
    log_level: str = "info"
    bind_host: str = "127.0.0.1"
    ports: Mapping[str, int] = field(default_factory=dict)
    addrs: Mapping[str, str] = field(default_factory=dict)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    db_pool_max: int = 10
    platform_fee_bps: int = 1000
    shutdown_grace_s: float = 30.0
    gateway_url: str | None = None
    api_key: str | None = None
    relay_advertise_addr: str | None = None
    auth: str = "token"
    # Under mTLS, the ports where node agents (which have no cluster
    # certificate) reach the registry and the relays.
    node_ports: Mapping[str, int] = field(default_factory=dict)
    tokens: Mapping[str, str] = field(default_factory=dict)  # identity -> token, from the environment
    migrate_on_start: bool = True
    db_role_passwords: Mapping[str, str] = field(default_factory=dict)  # schema -> password (migrate only)

    def node_port(self, service: str) -> int:
        """The port node agents use under mTLS (registry, relay)."""
        return self.node_ports[service]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        home = Path(env.get("IDLEGRID_HOME") or ".idlegrid").absolute()
        ports = {
            "ledger": env_int(env, "IDLEGRID_LEDGER_PORT", 50051, lo=0, hi=65535),
            "registry": env_int(env, "IDLEGRID_REGISTRY_PORT", 50052, lo=0, hi=65535),
            "scheduler": env_int(env, "IDLEGRID_SCHEDULER_PORT", 50053, lo=0, hi=65535),
            "metering": env_int(env, "IDLEGRID_METERING_PORT", 50054, lo=0, hi=65535),
            "relay": env_int(env, "IDLEGRID_RELAY_PORT", 50055, lo=0, hi=65535),
            "gateway": env_int(env, "IDLEGRID_GATEWAY_PORT", 8080, lo=0, hi=65535),
        }
        addrs = {
            name: env.get(f"IDLEGRID_{name.upper()}_ADDR") or f"127.0.0.1:{port}"
            for name, port in ports.items()
        }
        tls_cert, tls_key = env.get("IDLEGRID_TLS_CERT"), env.get("IDLEGRID_TLS_KEY")
        if bool(tls_cert) != bool(tls_key):
            raise ConfigError("IDLEGRID_TLS_CERT and IDLEGRID_TLS_KEY must be set together")
        auth = _choice(env, "IDLEGRID_AUTH", "token", _AUTH_MODES)
        if auth == "mtls" and not (tls_cert and env.get("IDLEGRID_TLS_CA")):
            raise ConfigError("IDLEGRID_AUTH=mtls needs IDLEGRID_TLS_CERT, IDLEGRID_TLS_KEY and IDLEGRID_TLS_CA")
        tokens = {i: env[f"IDLEGRID_TOKEN_{i.upper()}"] for i in IDENTITIES if env.get(f"IDLEGRID_TOKEN_{i.upper()}")}
        migrate = env.get("IDLEGRID_MIGRATE_ON_START", "") or "1"
        if migrate not in ("0", "1"):
            raise ConfigError(f"IDLEGRID_MIGRATE_ON_START must be 0 or 1, got {migrate!r}")
        return cls(
            home=home,
            database_url=env.get("IDLEGRID_DATABASE_URL") or None,
            service_token=env.get("IDLEGRID_SERVICE_TOKEN") or None,
            log_format=_choice(env, "IDLEGRID_LOG_FORMAT", "auto", _LOG_FORMATS),
            log_level=_choice(env, "IDLEGRID_LOG_LEVEL", "info", _LOG_LEVELS),
            bind_host=env.get("IDLEGRID_BIND_HOST") or "127.0.0.1",
            ports=ports,
            addrs=addrs,
            tls_cert=Path(tls_cert) if tls_cert else None,
            tls_key=Path(tls_key) if tls_key else None,
            tls_ca=Path(env["IDLEGRID_TLS_CA"]) if env.get("IDLEGRID_TLS_CA") else None,
            db_pool_max=env_int(env, "IDLEGRID_DB_POOL_MAX", 10, lo=1, hi=1000),
            platform_fee_bps=env_int(env, "IDLEGRID_PLATFORM_FEE_BPS", 1000, lo=0, hi=10_000),
            shutdown_grace_s=float(env_int(env, "IDLEGRID_SHUTDOWN_GRACE_S", 30, lo=0, hi=3600)),
            gateway_url=env.get("IDLEGRID_GATEWAY_URL") or None,
            api_key=env.get("IDLEGRID_API_KEY") or None,
            relay_advertise_addr=env.get("IDLEGRID_RELAY_ADVERTISE_ADDR") or None,
            auth=auth, tokens=tokens,
            node_ports={name: env_int(env, f"IDLEGRID_{name.upper()}_NODE_PORT", ports[name] + 1000, lo=0, hi=65535)
                        for name in ("registry", "relay")}, migrate_on_start=migrate == "1",
            db_role_passwords={s: env[f"IDLEGRID_DB_PASSWORD_{s.upper()}"] for s in _SCHEMAS
                               if env.get(f"IDLEGRID_DB_PASSWORD_{s.upper()}")},
        )

    def token(self) -> str:
        """The operator's token (the ``idlegrid`` CLI's credential)."""
        token = self.token_for(OPERATOR)
        if token is None:
            raise ConfigError("IDLEGRID_AUTH=mtls: the operator calls with a client certificate, not a token")
        return token

    def token_for(self, identity: str) -> str | None:
        """The token ``identity`` presents (None under mTLS): from
        IDLEGRID_TOKEN_<IDENTITY>, else derived from IDLEGRID_SERVICE_TOKEN
        (tests), else the one kept in $IDLEGRID_HOME/tokens."""
        from idlegrid.common.auth import check_token
        from idlegrid.common.secrets import home_token

        if self.auth == "mtls":
            return None
        try:
            if identity in self.tokens:
                return check_token(f"IDLEGRID_TOKEN_{identity.upper()}", self.tokens[identity])
            if self.service_token:
                root = check_token("IDLEGRID_SERVICE_TOKEN", self.service_token)
                return root if identity == OPERATOR else _derive(root, identity)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return home_token(self.home, identity)

    def guard(self, identities: Iterable[str]):
        """What a server uses to tell who calls: the tokens of ``identities``,
        or their client certificates under mTLS."""
        from idlegrid.common.auth import CertGuard, TokenGuard

        if self.auth == "mtls":
            return CertGuard()
        return TokenGuard({i: self.token_for(i) for i in identities})  # type: ignore[misc]


def _derive(root: str, identity: str) -> str:
    import hashlib
    import hmac

    return hmac.new(root.encode(), f"idlegrid identity {identity}".encode(), hashlib.sha256).hexdigest()
