"""REST routes a key uses about itself and its own account (what the console
signs in with, and its "API keys" panel):

| route | scopes | answer |
|---|---|---|
| GET /v1/whoami | any | the key's id, scope, account, expiry and the console views it may open |
| GET /v1/account/keys | consumer, provider | the account's keys (ids, scope, times; never a secret) |
| POST /v1/account/keys | consumer, provider | a new key of the same scope for the same account; the key is shown once |
| DELETE /v1/account/keys/{key_id} | consumer, provider | revokes one of the account's keys, at once |

An account holds at most KEYS_PER_ACCOUNT_MAX live keys. Keys made and
revoked here are audited like the admin's (actor: the calling key's id).
"""

from __future__ import annotations

import datetime as dt

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idlegrid.gateway import audit, bodies, keys, views
from idlegrid.gateway.console import sql
from idlegrid.gateway.context import caller, gw
from idlegrid.gateway.errors import ApiError, bad_request
from idlegrid.gateway.store import KeyRecord

KEYS_PER_ACCOUNT_MAX = 20
KEYS_LISTED_MAX = 100
VIEWS = {"consumer": ("partner",), "provider": ("provider",), "admin": ("admin",)}


def _when(t: float | None) -> str | None:
    return views.timestamp(dt.datetime.fromtimestamp(t, dt.UTC)) if t is not None else None


async def whoami(request: Request) -> Response:
    rec = await caller(request, *keys.SCOPES)
    return JSONResponse({"object": "whoami", "key_id": rec.key_id, "scope": rec.scope,
                         "account_id": views.uid(rec.account_id) if rec.account_id else None,
                         "provider_id": views.uid(rec.provider_id) if rec.provider_id else None,
                         "expires_at": _when(rec.expires_at), "views": list(VIEWS[rec.scope])})


async def _own(request: Request) -> tuple[KeyRecord, bytes]:
    rec = await caller(request, "consumer", "provider")
    assert rec.account_id is not None  # consumer and provider keys are bound to an account
    return rec, rec.account_id


def _key_view(k: sql.KeyRow) -> dict:
    return {"object": "api_key", "key_id": k.key_id, "scope": k.scope, "created_at": views.timestamp(k.created_at),
            "expires_at": views.timestamp(k.expires_at), "revoked_at": views.timestamp(k.revoked_at),
            "live": k.revoked_at is None}


async def list_keys(request: Request) -> Response:
    rec, account_id = await _own(request)
    rows = await sql.keys_of(gw(request).pool, account_id, limit=KEYS_LISTED_MAX)
    return JSONResponse({"object": "list", "account_id": views.uid(account_id), "current_key_id": rec.key_id,
                         "data": [_key_view(k) for k in rows]})


async def create_key(request: Request) -> Response:
    rec, account_id = await _own(request)
    g = gw(request)
    raw = await bodies.read(request, g.settings.body_bytes_max)
    body = bodies.parse_object(raw) if raw.strip() else {}
    bodies.only(body, {"expires_in_s"})
    expires_in_s = bodies.integer(body, "expires_in_s", lo=1, hi=keys.EXPIRES_IN_S_MAX)
    async with g.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", views.uid(account_id))
        if await sql.live_keys(conn, account_id) >= KEYS_PER_ACCOUNT_MAX:
            raise ApiError(409, f"this account already has {KEYS_PER_ACCOUNT_MAX} live keys, the most it may "
                                "hold; revoke one first", code="too_many_keys")
        made = await keys.issue(conn, scope=rec.scope, account_id=account_id, provider_id=rec.provider_id,
                                expires_in_s=expires_in_s)
        await audit.record(conn, actor=rec.key_id, action="create_key", result="ok", account_id=account_id,
                           target_key_id=made.key_id, detail=f"scope {rec.scope}, by the account itself")
    return JSONResponse({"object": "api_key", "key_id": made.key_id, "key": made.key, "scope": rec.scope,
                         "account_id": views.uid(account_id), "expires_at": views.timestamp(made.expires_at)},
                        status_code=201)


async def revoke_key(request: Request) -> Response:
    rec, account_id = await _own(request)
    g = gw(request)
    key_id = request.path_params["key_id"]
    if len(key_id) > keys.KEY_CHARS_MAX:
        raise bad_request("'key_id' is malformed", param="key_id")
    async with g.pool.acquire() as conn, conn.transaction():
        if await sql.key_owner(conn, key_id) != account_id or not await keys.revoke_key(conn, key_id):
            raise ApiError(404, "this account has no live key with this id", param="key_id", code="key_not_found")
        await audit.record(conn, actor=rec.key_id, action="revoke_key", result="ok", account_id=account_id,
                           target_key_id=key_id, detail="by the account itself")
    g.auth.evict(key_id)  # here at once; other replicas on the database's notification
    return JSONResponse({"object": "api_key", "key_id": key_id, "revoked": True})


def routes() -> list[Route]:
    return [
        Route("/v1/whoami", whoami, methods=["GET"]),
        Route("/v1/account/keys", list_keys, methods=["GET"]),
        Route("/v1/account/keys", create_key, methods=["POST"]),
        Route("/v1/account/keys/{key_id}", revoke_key, methods=["DELETE"]),
    ]
