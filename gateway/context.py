"""What every route handler reaches through ``request.app.state.gw``: the
settings, the database pool, the backends, key checks and rate limits."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from starlette.requests import Request

from idlegrid.common.config import Config
from idlegrid.gateway.auth import Authenticator, require
from idlegrid.gateway.backends import Backends
from idlegrid.gateway.edge import IpLimiter, KeySlots
from idlegrid.gateway.metrics import Metrics
from idlegrid.gateway.middleware import note, request_id
from idlegrid.gateway.ratelimit import RateLimiter
from idlegrid.gateway.settings import GatewaySettings
from idlegrid.gateway.store import KeyRecord


@dataclass(slots=True)
class Gateway:
    config: Config
    settings: GatewaySettings
    pool: asyncpg.Pool
    backends: Backends
    auth: Authenticator
    limiter: RateLimiter
    metrics: Metrics
    slots: KeySlots
    ip_limiter: IpLimiter

    @property
    def rpc_timeout_s(self) -> float:
        return self.settings.rpc_timeout_s


def gw(request: Request) -> Gateway:
    return request.app.state.gw


async def caller(request: Request, *scopes: str) -> KeyRecord:
    """The authenticated key of this request (401), within its requests in
    flight (429) and its rate limit (429), with one of ``scopes`` (403)."""
    g = gw(request)
    rec = await g.auth.authenticate(request.headers.get("authorization"))
    note(request.scope, key_id=rec.key_id, key_scope=rec.scope)
    g.slots.take(request.scope, rec.key_id)
    await g.limiter.take(rec)
    require(rec, *scopes)
    return rec


def metadata(request: Request) -> tuple[tuple[str, str], ...]:
    """gRPC metadata for backend calls: this request's id, for correlation."""
    return (("x-request-id", request_id(request.scope)),)
