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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from idlegrid.common.config import env_int as _int
from idlegrid.common.errors import ConfigError

MIB = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    rate_per_s: int = 5000
    burst: int = 10000
    body_bytes_max: int = 8 * MIB
    job_timeout_ms: int = 120_000
    rpc_timeout_ms: int = 10_000
    key_cache_max: int = 100_000
    concurrency_max: int = 4096

    def __post_init__(self) -> None:
        bounds = {
            "rate_per_s": (0, 10_000_000),
            "burst": (1, 100_000_000),
            "body_bytes_max": (1024, 1024 * MIB),
            "job_timeout_ms": (1000, 600_000),
            "rpc_timeout_ms": (100, 600_000),
            "key_cache_max": (0, 100_000_000),
            "concurrency_max": (1, 1_000_000),
        }
        for name, (lo, hi) in bounds.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ConfigError(f"gateway setting {name} must be in [{lo}, {hi}], got {value}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        import os

        env = os.environ if env is None else env
        d = cls()
        return cls(
            rate_per_s=_int(env, "IDLEGRID_GATEWAY_RATE_PER_S", d.rate_per_s, lo=0, hi=10_000_000),
            burst=_int(env, "IDLEGRID_GATEWAY_BURST", d.burst, lo=1, hi=100_000_000),
            body_bytes_max=_int(env, "IDLEGRID_GATEWAY_BODY_BYTES_MAX", d.body_bytes_max, lo=1024, hi=1024 * MIB),
            job_timeout_ms=_int(env, "IDLEGRID_GATEWAY_JOB_TIMEOUT_MS", d.job_timeout_ms, lo=1000, hi=600_000),
            rpc_timeout_ms=_int(env, "IDLEGRID_GATEWAY_RPC_TIMEOUT_MS", d.rpc_timeout_ms, lo=100, hi=600_000),
            key_cache_max=_int(env, "IDLEGRID_GATEWAY_KEY_CACHE_MAX", d.key_cache_max, lo=0, hi=100_000_000),
            concurrency_max=_int(env, "IDLEGRID_GATEWAY_CONCURRENCY_MAX", d.concurrency_max, lo=1, hi=1_000_000),
        )

    @property
    def job_timeout_s(self) -> float:
        return self.job_timeout_ms / 1000

    @property
    def rpc_timeout_s(self) -> float:
        return self.rpc_timeout_ms / 1000
