"""Metering's own settings, read once at start-up (:meth:`MeteringSettings.from_env`);
tests pass their own.

| variable | default | meaning |
|---|---|---|
| IDLEGRID_EARNINGS_HOLD_S | 86400 | release window: a job's provider share is held (pending on the ledger) this many seconds after settlement, then posted; 0 = posted at settlement (tests, benchmarks) |
| IDLEGRID_EARNINGS_POLL_MS | 1000 | how often the earnings worker looks for earnings to release or void |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from idlegrid.common.config import env_int
from idlegrid.common.errors import ConfigError
from idlegrid.metering.earning_states import HOLD_S_MAX

HOLD_S_DEFAULT = 86_400


@dataclass(frozen=True, slots=True, kw_only=True)
class MeteringSettings:
    earnings_hold_s: int = HOLD_S_DEFAULT
    earnings_poll_ms: int = 1_000
    earnings_batch_max: int = 1_000  # earnings per ledger call (the ledger's EarningsRequest maximum)

    def __post_init__(self) -> None:
        bounds = {"earnings_hold_s": (0, HOLD_S_MAX), "earnings_poll_ms": (10, 600_000),
                  "earnings_batch_max": (1, 1_000)}
        for name, (lo, hi) in bounds.items():
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise ConfigError(f"metering setting {name} must be in [{lo}, {hi}], got {v}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MeteringSettings:
        import os

        env = os.environ if env is None else env
        return cls(
            earnings_hold_s=env_int(env, "IDLEGRID_EARNINGS_HOLD_S", HOLD_S_DEFAULT, lo=0, hi=HOLD_S_MAX),
            earnings_poll_ms=env_int(env, "IDLEGRID_EARNINGS_POLL_MS", 1_000, lo=10, hi=600_000),
        )
