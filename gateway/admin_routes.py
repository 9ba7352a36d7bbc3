"""Admin routes (admin key):

| route | body | answer |
|---|---|---|
| POST /v1/admin/accounts | {"kind": "consumer"/"provider", "name"} | {"account_id", "provider_id", "provider_token" (once)} |
| POST /v1/admin/keys | {"account_id", "scope", "rate_per_s"?, "burst"?} | {"key_id", "key" (once)} |
| DELETE /v1/admin/keys/{key_id} | | {"key_id", "revoked": true}; effective at once on every replica |
| POST /v1/admin/accounts/{account_id}/topup | {"amount_micros", "idempotency_key"} | the operation and the balances |
| POST /v1/admin/accounts/{account_id}/payout | {"amount_micros", "idempotency_key"} | idem; 402 when the balance is short |
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idlegrid.common.errors import InvalidArgument
from idlegrid.common.money import AMOUNT_MAX
from idlegrid.gateway import bodies, keys, onboarding, params, views
from idlegrid.gateway.context import caller, gw, metadata
from idlegrid.gateway.errors import ApiError, bad_request, rpc
from idlegrid.ledger.v1 import ledger_pb2 as lpb

S = lpb.OperationStatus


async def create_account(request: Request) -> Response:
    await caller(request, "admin")
    g = gw(request)
    body = await bodies.read_json(request, g.settings.body_bytes_max)
    bodies.only(body, {"kind", "name"})
    kind, name = onboarding.check(bodies.required(body, "kind"), bodies.required(body, "name"))
    created = await onboarding.create_account(g.pool, g.backends, kind=kind, name=name, timeout_s=g.rpc_timeout_s,
                                              metadata=metadata(request))
    return JSONResponse({"object": "account", "account_id": views.uid(created.account_id), "kind": kind,
                         "name": name, "provider_id": views.uid(created.provider_id) if created.provider_id else None,
                         "provider_token": created.provider_token}, status_code=201)


async def create_key(request: Request) -> Response:
    await caller(request, "admin")
    g = gw(request)
    body = await bodies.read_json(request, g.settings.body_bytes_max)
    bodies.only(body, {"account_id", "scope", "rate_per_s", "burst"})
    scope = bodies.string(body, "scope", required_=True, max_len=16)
    if scope not in keys.SCOPES:
        raise bad_request(f"'scope' must be one of {', '.join(keys.SCOPES)}", param="scope")
    rate = bodies.integer(body, "rate_per_s", lo=0, hi=10_000_000)
    burst = bodies.integer(body, "burst", lo=1, hi=100_000_000)
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
        key_id, key = await keys.create_key(g.pool, scope=scope, account_id=account_id, provider_id=provider_id,
                                            rate_per_s=rate, burst=burst)
    except InvalidArgument as e:
        raise bad_request(e.message) from None
    return JSONResponse({"object": "api_key", "key_id": key_id, "key": key, "scope": scope,
                         "account_id": raw_account}, status_code=201)


async def revoke_key(request: Request) -> Response:
    await caller(request, "admin")
    g = gw(request)
    key_id = request.path_params["key_id"]
    if not await keys.revoke_key(g.pool, key_id):
        raise ApiError(404, "no live key with this id", param="key_id", code="key_not_found")
    g.auth.evict(key_id)  # here at once; other replicas on the database's notification
    return JSONResponse({"object": "api_key", "key_id": key_id, "revoked": True})


async def _money(request: Request) -> tuple[bytes, int, str]:
    await caller(request, "admin")
    g = gw(request)
    account_id = params.account_uuid(request.path_params["account_id"])
    body = await bodies.read_json(request, g.settings.body_bytes_max)
    bodies.only(body, {"amount_micros", "idempotency_key"})
    amount = bodies.integer(body, "amount_micros", lo=1, hi=AMOUNT_MAX, required_=True)
    key = bodies.string(body, "idempotency_key", required_=True, max_len=128)
    if not key:
        raise bad_request("'idempotency_key' must not be empty", param="idempotency_key")
    return account_id, amount, key  # type: ignore[return-value]


async def _answer(request: Request, account_id: bytes, op: lpb.OperationResponse) -> Response:
    if op.status == S.OPERATION_STATUS_INSUFFICIENT_FUNDS:
        raise ApiError(402, "the account's balance does not cover this amount", code="insufficient_funds")
    if op.status == S.OPERATION_STATUS_CONFLICT:
        raise ApiError(409, "this idempotency_key was used with other parameters", param="idempotency_key",
                       code="idempotency_key_reused")
    if op.status not in (S.OPERATION_STATUS_OK, S.OPERATION_STATUS_ALREADY_APPLIED):
        raise ApiError(502, f"the ledger refused: {S.Name(op.status)}", code="upstream_error")
    g = gw(request)
    account = await onboarding.lookup(g.backends, account_id, timeout_s=g.rpc_timeout_s, metadata=metadata(request))
    return JSONResponse({"object": "operation",
                         "status": "applied" if op.status == S.OPERATION_STATUS_OK else "already_applied",
                         "amount_micros": op.amount, "transfer_ids": [views.uid(t) for t in op.transfer_ids],
                         "account": views.account(account)})


async def topup(request: Request) -> Response:
    account_id, amount, key = await _money(request)
    g = gw(request)
    account = await onboarding.lookup(g.backends, account_id, timeout_s=g.rpc_timeout_s, metadata=metadata(request))
    if account.kind != onboarding.KINDS["consumer"]:
        raise bad_request("top-ups go to consumer accounts", param="account_id", code="wrong_account_kind")
    op = await rpc(g.backends.ledger.TopUp(lpb.TopUpRequest(account_id=account_id, amount=amount,
                                                            idempotency_key=key),
                                           timeout=g.rpc_timeout_s, metadata=metadata(request)))
    return await _answer(request, account_id, op)


async def payout(request: Request) -> Response:
    account_id, amount, key = await _money(request)
    g = gw(request)
    account = await onboarding.lookup(g.backends, account_id, timeout_s=g.rpc_timeout_s, metadata=metadata(request))
    if account.kind != onboarding.KINDS["provider"]:
        raise bad_request("payouts come from provider accounts", param="account_id", code="wrong_account_kind")
    op = await rpc(g.backends.ledger.Payout(lpb.PayoutRequest(provider_account_id=account_id, amount=amount,
                                                              idempotency_key=key),
                                            timeout=g.rpc_timeout_s, metadata=metadata(request)))
    return await _answer(request, account_id, op)


def routes() -> list[Route]:
    return [
        Route("/v1/admin/accounts", create_account, methods=["POST"]),
        Route("/v1/admin/keys", create_key, methods=["POST"]),
        Route("/v1/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
        Route("/v1/admin/accounts/{account_id}/topup", topup, methods=["POST"]),
        Route("/v1/admin/accounts/{account_id}/payout", payout, methods=["POST"]),
    ]



