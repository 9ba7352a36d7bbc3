"""Admin routes (admin key):

| route | body | answer |
|---|---|---|
| POST /v1/admin/accounts | {"kind": "consumer"/"provider", "name"} | {"account_id", "provider_id", "provider_token" (once)} |
| POST /v1/admin/keys | {"account_id", "scope", "rate_per_s"?, "burst"?, "expires_in_s"?} | {"key_id", "key" (once), "expires_at"} |
| DELETE /v1/admin/keys/{key_id} | | {"key_id", "revoked": true}; effective at once on every replica |
| POST /v1/admin/accounts/{account_id}/topup | {"amount_micros", "idempotency_key"} | the operation and the balances; 403 over a cap |
| POST /v1/admin/accounts/{account_id}/payout | {"amount_micros", "idempotency_key"} | idem; 402 when the balance is short |
| GET /v1/admin/audit | ?limit, ?cursor | the audit trail, newest first (gateway/audit.py) |

Every action is audited (who: the admin key; what; the result); money
operations are capped (gateway/admin_limits.py); an admin key lives at most
IDLEGRID_GATEWAY_ADMIN_KEY_TTL_S. The registry's catalog and operator
controls (suspensions, trust, provider tokens, banned endpoints) are admin
routes too: gateway/operator_routes.py.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idlegrid.common.errors import InvalidArgument
from idlegrid.common.money import AMOUNT_MAX
from idlegrid.gateway import (
    admin_limits,
    audit,
    bodies,
    keys,
    onboarding,
    operator_routes,
    params,
    views,
)
from idlegrid.gateway.admin_limits import MoneyOp
from idlegrid.gateway.context import caller, gw, metadata
from idlegrid.gateway.errors import ApiError, bad_request, rpc
from idlegrid.ledger.v1 import ledger_pb2 as lpb

S = lpb.OperationStatus
IDEMPOTENCY_KEY_CHARS_MAX = 128
IDEMPOTENCY_KEY = re.compile(r"[^\x00-\x1f\x7f]+")


async def create_account(request: Request) -> Response:
    rec = await caller(request, "admin")
    g = gw(request)
    body = await bodies.read_json(request, g.settings.body_bytes_max)
    bodies.only(body, {"kind", "name"})
    kind, name = onboarding.check(bodies.required(body, "kind"), bodies.required(body, "name"))
    try:
        created = await onboarding.create_account(g.pool, g.backends, kind=kind, name=name,
                                                  timeout_s=g.rpc_timeout_s, metadata=metadata(request))
    except ApiError as e:
        await audit.record(g.pool, actor=rec.key_id, action="create_account", result="refused",
                           detail=f"{e.code}: {kind} {name}")
        raise
    await audit.record(g.pool, actor=rec.key_id, action="create_account", result="ok",
                       account_id=created.account_id, detail=f"{kind} {name}")
    return JSONResponse({"object": "account", "account_id": views.uid(created.account_id), "kind": kind,
                         "name": name, "provider_id": views.uid(created.provider_id) if created.provider_id else None,
                         "provider_token": created.provider_token}, status_code=201)


async def create_key(request: Request) -> Response:
    rec = await caller(request, "admin")
    g = gw(request)
    body = await bodies.read_json(request, g.settings.body_bytes_max)
    bodies.only(body, {"account_id", "scope", "rate_per_s", "burst", "expires_in_s"})
    scope = bodies.string(body, "scope", required_=True, max_len=16)
    if scope not in keys.SCOPES:
        raise bad_request(f"'scope' must be one of {', '.join(keys.SCOPES)}", param="scope")
    rate = bodies.integer(body, "rate_per_s", lo=0, hi=10_000_000)
    burst = bodies.integer(body, "burst", lo=1, hi=100_000_000)
    ttl_max = g.settings.admin_key_ttl_s if scope == "admin" else keys.EXPIRES_IN_S_MAX
    expires_in_s = bodies.integer(body, "expires_in_s", lo=1, hi=ttl_max)
    if scope == "admin" and expires_in_s is None:
        expires_in_s = g.settings.admin_key_ttl_s
    raw_account = bodies.string(body, "account_id", max_len=64)
    account_id = provider_id = None
    if scope == "admin":
        if raw_account is not None:
            raise bad_request("an admin key is not bound to an account; leave out 'account_id'", param="account_id")
    else:
        if raw_account is None:
            raise bad_request(f"a {scope} key needs 'account_id'", param="account_id",
                              code="missing_required_parameter")
        account_id = params.account_uuid(raw_account)
        made = await onboarding.created_kind(g.pool, account_id)
        if made is None:
            raise ApiError(404, f"no account {raw_account} was created through the gateway", param="account_id",
                           code="account_not_found")
        if made != scope:
            raise bad_request(f"account {raw_account} is a {made} account, not a {scope} account",
                              param="account_id", code="wrong_account_kind")
        await onboarding.lookup(g.backends, account_id, timeout_s=g.rpc_timeout_s, metadata=metadata(request))
        if scope == "provider":
            provider_id = await onboarding.provider_of(g.pool, account_id)
    try:
        async with g.pool.acquire() as conn, conn.transaction():
            made = await keys.issue(conn, scope=scope, account_id=account_id, provider_id=provider_id,
                                    rate_per_s=rate, burst=burst, expires_in_s=expires_in_s)
            await audit.record(conn, actor=rec.key_id, action="create_key", result="ok", account_id=account_id,
                               target_key_id=made.key_id, detail=f"scope {scope}")
    except InvalidArgument as e:
        raise bad_request(e.message) from None
    return JSONResponse({"object": "api_key", "key_id": made.key_id, "key": made.key, "scope": scope,
                         "account_id": raw_account, "expires_at": views.timestamp(made.expires_at)},
                        status_code=201)


async def revoke_key(request: Request) -> Response:
    rec = await caller(request, "admin")
    g = gw(request)
    key_id = request.path_params["key_id"]
    async with g.pool.acquire() as conn, conn.transaction():
        if not await keys.revoke_key(conn, key_id):
            raise ApiError(404, "no live key with this id", param="key_id", code="key_not_found")
        await audit.record(conn, actor=rec.key_id, action="revoke_key", result="ok", target_key_id=key_id)
    g.auth.evict(key_id)  # here at once; other replicas on the database's notification
    return JSONResponse({"object": "api_key", "key_id": key_id, "revoked": True})


async def _money(request: Request, action: str) -> MoneyOp:
    rec = await caller(request, "admin")
    g = gw(request)
    account_id = params.account_uuid(request.path_params["account_id"])
    body = await bodies.read_json(request, g.settings.body_bytes_max)
    bodies.only(body, {"amount_micros", "idempotency_key"})
    amount = bodies.integer(body, "amount_micros", lo=1, hi=AMOUNT_MAX, required_=True)
    key = bodies.string(body, "idempotency_key", required_=True, max_len=IDEMPOTENCY_KEY_CHARS_MAX)
    if not key:
        raise bad_request("'idempotency_key' must not be empty", param="idempotency_key")
    if not IDEMPOTENCY_KEY.fullmatch(key):  # PostgreSQL text holds no NUL; no key needs a control character
        raise bad_request("'idempotency_key' must not contain control characters", param="idempotency_key")
    assert amount is not None and key is not None  # required_
    return MoneyOp(action=action, key_id=rec.key_id, account_id=account_id, amount_micros=amount,
                   idempotency_key=key)


def _refusal(op: lpb.OperationResponse) -> ApiError | None:
    if op.status == S.OPERATION_STATUS_INSUFFICIENT_FUNDS:
        return ApiError(402, "the account's balance does not cover this amount", code="insufficient_funds")
    if op.status == S.OPERATION_STATUS_CONFLICT:
        return ApiError(409, "this idempotency_key was used with other parameters", param="idempotency_key",
                        code="idempotency_key_reused")
    if op.status not in (S.OPERATION_STATUS_OK, S.OPERATION_STATUS_ALREADY_APPLIED):
        return ApiError(502, f"the ledger refused: {S.Name(op.status)}", code="upstream_error")
    return None


async def _move(request: Request, action: str, kind: str, wrong_kind: str) -> Response:
    """A top-up or a payout: checked, capped (admin_limits), asked of the
    ledger, and audited at each step."""
    op = await _money(request, action)
    g = gw(request)
    md = metadata(request)
    account = await onboarding.lookup(g.backends, op.account_id, timeout_s=g.rpc_timeout_s, metadata=md)
    if account.kind != onboarding.KINDS[kind]:
        raise bad_request(wrong_kind, param="account_id", code="wrong_account_kind")
    await admin_limits.reserve(g.pool, op, g.settings)
    try:
        if action == "topup":
            call = g.backends.ledger.TopUp(lpb.TopUpRequest(
                account_id=op.account_id, amount=op.amount_micros, idempotency_key=op.idempotency_key),
                timeout=g.rpc_timeout_s, metadata=md)
        else:
            call = g.backends.ledger.Payout(lpb.PayoutRequest(
                provider_account_id=op.account_id, amount=op.amount_micros, idempotency_key=op.idempotency_key),
                timeout=g.rpc_timeout_s, metadata=md)
        answer = await rpc(call)
    except ApiError as e:
        await admin_limits.finish(g.pool, op, result="failed", detail=e.code or "")
        raise
    refusal = _refusal(answer)
    applied = answer.status == S.OPERATION_STATUS_OK
    await admin_limits.finish(g.pool, op, result="refused" if refusal else "ok" if applied else "already_applied",
                              detail=S.Name(answer.status) if refusal else "")
    if refusal is not None:
        raise refusal
    after = await onboarding.lookup(g.backends, op.account_id, timeout_s=g.rpc_timeout_s, metadata=md)
    return JSONResponse({"object": "operation", "status": "applied" if applied else "already_applied",
                         "amount_micros": answer.amount, "transfer_ids": [views.uid(t) for t in answer.transfer_ids],
                         "account": views.account(after)})


async def topup(request: Request) -> Response:
    return await _move(request, "topup", "consumer", "top-ups go to consumer accounts")


async def payout(request: Request) -> Response:
    return await _move(request, "payout", "provider", "payouts come from provider accounts")


async def audit_trail(request: Request) -> Response:
    await caller(request, "admin")
    g = gw(request)
    limit, before_seq = params.limit(request), params.seq_cursor(request)
    entries = await audit.page(g.pool, before_seq=before_seq, limit=limit)
    more = len(entries) == limit and entries[-1].seq > 1
    return JSONResponse({"object": "list", "data": [audit.view(e) for e in entries],
                         "next_cursor": str(entries[-1].seq) if more else None})


def routes() -> list[Route]:
    return [
        Route("/v1/admin/accounts", create_account, methods=["POST"]),
        Route("/v1/admin/keys", create_key, methods=["POST"]),
        Route("/v1/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
        Route("/v1/admin/accounts/{account_id}/topup", topup, methods=["POST"]),
        Route("/v1/admin/accounts/{account_id}/payout", payout, methods=["POST"]),
        Route("/v1/admin/audit", audit_trail, methods=["GET"]),
        *operator_routes.routes(),
    ]



