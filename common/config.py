"""Configuration, read once at start-up from environment variables.

Every setting has a documented default; a required value that is missing
fails with its name. Nothing else in the code reads ``os.environ``.

| variable | default | meaning |
|---|---|---|
| IDLEGRID_HOME | ./.idlegrid | data directory (embedded database, demo keys) |
| IDLEGRID_DATABASE_URL | (unset) | PostgreSQL URL; unset = embedded PostgreSQL in $IDLEGRID_HOME/pg |
| IDLEGRID_SERVICE_TOKEN | (unset) | shared token services present to each other; unset = a token kept in $IDLEGRID_HOME/service-token |
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from idlegrid.common.errors import ConfigError

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
        )

    def token(self) -> str:
        """The service token: from the environment, or one kept in the home dir."""
        if self.service_token:
            return self.service_token
        from idlegrid.common.secrets import home_service_token

        return home_service_token(self.home)
