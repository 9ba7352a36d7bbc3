"""Rate limits per API key that hold across every gateway replica: the
allowance lives in PostgreSQL (GCRA, one row per key; see gateway.rate_take
in the migration), so every replica draws on the same one.

A key may send ``burst`` requests at once and ``rate_per_s`` per second
sustained; the key's own limits (set when it was created) override the
gateway's defaults (IDLEGRID_GATEWAY_RATE_PER_S / IDLEGRID_GATEWAY_BURST).
A rate of 0 means no limit.

A replica does not ask the database for every request: it leases a few
requests of the key's allowance at once and spends them locally. The lease
grows while it is used up before it expires and shrinks when it is not, up
to ``rate_per_s x LEASE_TTL_S`` (and a quarter of the burst); whatever is
left after LEASE_TTL_S is dropped, never spent later. So the limit is never
exceeded across replicas; a busy key costs a database round trip every few
dozen requests instead of every one, and a key with a small limit (lease of
one) is checked exactly on every request.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import asyncpg
import structlog

from idlegrid.gateway import store
from idlegrid.gateway.errors import ApiError
from idlegrid.gateway.store import KeyRecord

log = structlog.get_logger("gateway.ratelimit")

LEASE_TTL_S = 0.1
LEASES_MAX = 100_000


@dataclass(slots=True)
class _Lease:
    tokens: int = 0
    expires: float = 0.0
    size: int = 1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RateLimiter:
    def __init__(self, pool: asyncpg.Pool, *, rate_per_s: int, burst: int, acquire_timeout_s: float = 1.0) -> None:
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s
        self._rate = rate_per_s
        self._burst = burst
        self._leases: dict[str, _Lease] = {}

    async def take(self, rec: KeyRecord) -> None:
        """Takes one request from the key's allowance; 429 when there is none."""
        rate = self._rate if rec.rate_per_s is None else rec.rate_per_s
        burst = self._burst if rec.burst is None else rec.burst
        if rate == 0:
            return
        lease = self._leases.get(rec.key_id)
        if lease is None:
            if len(self._leases) >= LEASES_MAX:
                self._prune()
            lease = self._leases[rec.key_id] = _Lease()
        if self._spend(lease):
            return
        async with lease.lock:  # one refill per key at a time; the others wait for it
            if self._spend(lease):
                return
            size_max = max(1, min(burst // 4, math.floor(rate * LEASE_TTL_S)))
            if lease.expires:  # grow when the last lease was used up in time, else shrink
                used_up = lease.tokens == 0 and time.monotonic() < lease.expires
                lease.size = min(size_max, lease.size * 2) if used_up else max(1, lease.size // 2)
            lease.size = min(lease.size, size_max)
            granted, wait_s = await self._draw(rec.key_id, 1.0 / rate, burst, lease.size)
            if granted == 0:
                lease.tokens, lease.expires = 0, 0.0
                raise ApiError(
                    429, f"rate limit exceeded for this key ({rate} requests/s, burst {burst}); "
                         f"retry in {wait_s:.3f} s", code="rate_limit_exceeded",
                    headers={"Retry-After": str(max(1, math.ceil(wait_s))),
                             "retry-after-ms": str(math.ceil(wait_s * 1000))})
            lease.tokens, lease.expires = granted - 1, time.monotonic() + LEASE_TTL_S

    @staticmethod
    def _spend(lease: _Lease) -> bool:
        if lease.tokens > 0 and time.monotonic() < lease.expires:
            lease.tokens -= 1
            return True
        return False

    async def _draw(self, key_id: str, interval_s: float, burst: int, want: int) -> tuple[int, float]:
        try:
            async with store.connection(self._pool, timeout_s=self._acquire_timeout_s) as conn:
                return await store.rate_take(conn, key_id=key_id, interval_s=interval_s, burst=burst, want=want)
        except store.PoolBusy:
            raise ApiError(503, "the gateway's database connections are all busy; try again", code="database_busy",
                           headers={"Retry-After": "1"}) from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            log.warning("ratelimit.unavailable", error=type(e).__name__)
            raise ApiError(503, "cannot check the rate limit right now; try again", code="rate_limit_unavailable",
                           headers={"Retry-After": "1"}) from None

    def _prune(self) -> None:
        now = time.monotonic()
        for key_id in [k for k, v in self._leases.items() if v.expires < now and not v.lock.locked()]:
            del self._leases[key_id]
