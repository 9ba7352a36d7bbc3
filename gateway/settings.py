"""The gateway's own settings, read once at start-up from environment
variables (the shared ones live in idlegrid.common.config).

| variable | default | meaning |
|---|---|---|
| IDLEGRID_GATEWAY_RATE_PER_S | 5000 | sustained requests per second per API key, across all replicas (0 = no limit) |
| IDLEGRID_GATEWAY_BURST | 10000 | requests a key may send at once above the sustained rate |
| IDLEGRID_GATEWAY_BODY_BYTES_MAX | 8388608 | largest request body (8 MiB); larger is 413 |
| IDLEGRID_GATEWAY_JOB_TIMEOUT_MS | 120000 | deadline of one inference job (the scheduler's timeout_ms) |
| IDLEGRID_GATEWAY_RPC_TIMEOUT_MS | 10000 | deadline of every other call to a backend service |
| IDLEGRID_GATEWAY_KEY_CACHE_MAX | 100000 | verified API keys kept in memory (revocation evicts at once) |
| IDLEGRID_GATEWAY_CONCURRENCY_MAX | 4096 | requests in flight per replica; beyond it, 503 |
| IDLEGRID_GATEWAY_KEY_CONCURRENCY_MAX | 64 | requests in flight per API key per replica; beyond it, 429 |
| IDLEGRID_GATEWAY_IP_RATE_PER_S | 5000 | requests per second per client IP per replica, before authentication (0 = off) |
| IDLEGRID_GATEWAY_IP_BURST | 10000 | requests a client IP may send at once |
| IDLEGRID_GATEWAY_IP_TRACKED_MAX | 100000 | client IPs tracked per replica (least recently seen forgotten first) |
| IDLEGRID_GATEWAY_TRUSTED_PROXIES | (none) | comma-separated addresses/CIDRs whose X-Forwarded-For is believed |
| IDLEGRID_GATEWAY_UNKNOWN_KEY_TTL_MS | 5000 | how long an unknown key id is answered 401 without asking the database |
| IDLEGRID_GATEWAY_UNKNOWN_KEY_CACHE_MAX | 100000 | unknown key ids remembered per replica |
| IDLEGRID_GATEWAY_DB_ACQUIRE_TIMEOUT_MS | 1000 | longest wait for a database connection on the request path; then 503 |
| IDLEGRID_GATEWAY_ADMIN_KEY_TTL_S | 2592000 | life of a new admin key (30 days); the longest an admin may ask for |
| IDLEGRID_GATEWAY_TOPUP_CALL_MAX_MICROS | 10^15 | largest single top-up |
| IDLEGRID_GATEWAY_TOPUP_KEY_DAY_MAX_MICROS | 10^16 | top-ups per admin key per UTC day |
| IDLEGRID_GATEWAY_TOPUP_DAY_MAX_MICROS | 10^17 | top-ups by all admin keys together per UTC day |
| IDLEGRID_GATEWAY_PAYOUT_CALL_MAX_MICROS | 10^15 | largest single payout |
| IDLEGRID_GATEWAY_PAYOUT_KEY_DAY_MAX_MICROS | 10^16 | payouts per admin key per UTC day |
| IDLEGRID_GATEWAY_PAYOUT_DAY_MAX_MICROS | 10^17 | payouts by all admin keys together per UTC day |
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from idlegrid.common.config import env_int
from idlegrid.common.errors import ConfigError
from idlegrid.common.money import AMOUNT_MAX
from idlegrid.gateway.keys import ADMIN_KEY_TTL_S_DEFAULT, EXPIRES_IN_S_MAX

MIB = 1 << 20
DAY_S = 86_400
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# field: (lo, hi); the variable is IDLEGRID_GATEWAY_<FIELD>.
_BOUNDS: dict[str, tuple[int, int]] = {
    "rate_per_s": (0, 10_000_000),
    "burst": (1, 100_000_000),
    "body_bytes_max": (1024, 1024 * MIB),
    "job_timeout_ms": (1000, 600_000),
    "rpc_timeout_ms": (100, 600_000),
    "key_cache_max": (0, 100_000_000),
    "concurrency_max": (1, 1_000_000),
    "key_concurrency_max": (1, 1_000_000),
    "ip_rate_per_s": (0, 10_000_000),
    "ip_burst": (1, 100_000_000),
    "ip_tracked_max": (1, 100_000_000),
    "unknown_key_ttl_ms": (0, 3_600_000),
    "unknown_key_cache_max": (0, 100_000_000),
    "db_acquire_timeout_ms": (10, 600_000),
    "admin_key_ttl_s": (1, EXPIRES_IN_S_MAX),
    **{f"{action}_{cap}_max_micros": (1, AMOUNT_MAX)
       for action in ("topup", "payout") for cap in ("call", "key_day", "day")},
}


def parse_networks(raw: str, name: str = "IDLEGRID_GATEWAY_TRUSTED_PROXIES") -> tuple[Network, ...]:
    """Comma-separated addresses or CIDRs ("10.0.0.0/8, 127.0.0.1")."""
    nets = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"{name} must list IP addresses or CIDRs, got {part!r}") from None
    return tuple(nets)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    rate_per_s: int = 5000
    burst: int = 10000
    body_bytes_max: int = 8 * MIB
    job_timeout_ms: int = 120_000
    rpc_timeout_ms: int = 10_000
    key_cache_max: int = 100_000
    concurrency_max: int = 4096
    # Edge: cheap refusals before any database work.
    key_concurrency_max: int = 64  # 2 cores: 64 of one key's jobs in flight already queue at the nodes
    ip_rate_per_s: int = 5000
    ip_burst: int = 10000
    ip_tracked_max: int = 100_000
    trusted_proxies: tuple[Network, ...] = field(default=())
    unknown_key_ttl_ms: int = 5000
    unknown_key_cache_max: int = 100_000
    db_acquire_timeout_ms: int = 1000
    # Admin keys and money.
    admin_key_ttl_s: int = ADMIN_KEY_TTL_S_DEFAULT
    topup_call_max_micros: int = 10**12  # 1,000,000 credits
    topup_key_day_max_micros: int = 10**13
    topup_day_max_micros: int = 10**14
    payout_call_max_micros: int = 10**12  # 1,000,000 credits
    payout_key_day_max_micros: int = 10**13
    payout_day_max_micros: int = 10**14

    def __post_init__(self) -> None:
        for name, (lo, hi) in _BOUNDS.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ConfigError(f"gateway setting {name} must be in [{lo}, {hi}], got {value}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        import os

        env = os.environ if env is None else env
        d = cls()
        values: dict = {}
        for f in fields(cls):
            if f.name in _BOUNDS:
                lo, hi = _BOUNDS[f.name]
                values[f.name] = env_int(env, f"IDLEGRID_GATEWAY_{f.name.upper()}", getattr(d, f.name), lo=lo, hi=hi)
        values["trusted_proxies"] = parse_networks(env.get("IDLEGRID_GATEWAY_TRUSTED_PROXIES", ""))
        return cls(**values)

    @property
    def job_timeout_s(self) -> float:
        return self.job_timeout_ms / 1000

    @property
    def rpc_timeout_s(self) -> float:
        return self.rpc_timeout_ms / 1000

    @property
    def db_acquire_timeout_s(self) -> float:
        return self.db_acquire_timeout_ms / 1000

    def money_caps(self, action: str) -> tuple[int, int, int]:
        """(per call, per admin key per day, all admin keys per day) of
        ``action`` ("topup" or "payout"), in micro-credits."""
        return (getattr(self, f"{action}_call_max_micros"), getattr(self, f"{action}_key_day_max_micros"),
                getattr(self, f"{action}_day_max_micros"))
