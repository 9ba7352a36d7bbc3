"""Operator routes (admin key): the registry's catalog and operator controls.
Each write carries a ``reason`` (1..1,024 chars); the registry records it with
the admin key's id as the actor (GET /v1/admin/operator-actions), and the
gateway's audit trail records it too (GET /v1/admin/audit).

| route | body | answer |
|---|---|---|
| GET /v1/admin/catalog | | the catalog, by name |
| PUT /v1/admin/catalog/{name} | the model (kind, tokenizer, weights_digest, context_length, canaries, max_price) and reason | the entry |
| DELETE /v1/admin/catalog/{name}?reason= | | {"name", "deleted": true}; nodes' offers of it stop being routable |
| POST /v1/admin/nodes/{node_id}/suspend, /unsuspend | {"reason"} | the nodes whose state changed |
| POST /v1/admin/providers/{provider_id}/suspend, /unsuspend | {"reason"} | idem (every node of the provider) |
| POST /v1/admin/providers/{provider_id}/trust, /untrust | {"reason"} | the provider |
| POST /v1/admin/providers/{provider_id}/rotate-token | {"reason"} | the new provider token (shown once) |
| POST /v1/admin/providers/{provider_id}/revoke-token | {"reason"} | the nodes that went offline |
| POST /v1/admin/endpoints/ban, /unban | {"host", "reason"} | idem |
| GET /v1/admin/operator-actions | ?limit, ?cursor | the registry's trail, oldest first |

Node and provider ids are UUIDs (or 32 hex digits, as node views print them).
"""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idlegrid.gateway import audit, bodies, operator_views, params
from idlegrid.gateway.context import caller, gw, metadata
from idlegrid.gateway.errors import ApiError, bad_request, rpc
from idlegrid.gateway.store import KeyRecord
from idlegrid.registry.v1 import registry_pb2 as rpb

REASON_CHARS_MAX = 1_024


def _id(request: Request, param: str) -> bytes:
    raw = request.path_params[param]
    try:
        b = uuid.UUID(raw).bytes
    except ValueError:
        raise bad_request(f"'{param}' must be a UUID", param=param, code="invalid_id") from None
    if b == bytes(16):
        raise bad_request(f"'{param}' must not be all zeros", param=param, code="invalid_id")
    return b


def _reason(value: object) -> str:
    if value is None:
        raise bad_request("'reason' is required", param="reason", code="missing_required_parameter")
    if not isinstance(value, str):
        raise bad_request("'reason' must be a string", param="reason", code="invalid_type")
    if not 1 <= len(value) <= REASON_CHARS_MAX or not value.isprintable() or not value.strip():
        raise bad_request(f"'reason' must be 1..{REASON_CHARS_MAX} printable characters", param="reason")
    return value


async def _body(request: Request, allowed: set[str]) -> dict:
    body = await bodies.read_json(request, gw(request).settings.body_bytes_max)
    bodies.only(body, allowed)
    return body


async def _act(request: Request, rec: KeyRecord, action: str, target: str, reason: str, call):
    """The registry call ``call(actor)`` (the actor: the admin key's id), audited with its outcome."""
    g = gw(request)
    detail = f"{target}: {reason}"
    try:
        answer = await rpc(call(rec.key_id))
    except ApiError as e:
        await audit.record(g.pool, actor=rec.key_id, action=action, result="refused", detail=f"{e.code}: {detail}")
        raise
    await audit.record(g.pool, actor=rec.key_id, action=action, result="ok", detail=detail)
    return answer


def _registry(request: Request):
    g = gw(request)
    return g.backends.registry, {"timeout": g.rpc_timeout_s, "metadata": metadata(request)}


# ------------------------------------------------------------------ catalog

async def list_catalog(request: Request) -> Response:
    await caller(request, "admin")
    reg, kw = _registry(request)
    r = await rpc(reg.ListCatalog(rpb.ListCatalogRequest(), **kw))
    return JSONResponse({"object": "list", "data": [operator_views.catalog_model(m) for m in r.models]})


async def put_catalog_model(request: Request) -> Response:
    rec = await caller(request, "admin")
    name = request.path_params["name"]
    body = await _body(request, set(operator_views.CATALOG_FIELDS) | {"reason"})
    reason = _reason(body.get("reason"))
    model = operator_views.catalog_request(name, body)
    reg, kw = _registry(request)
    m = await _act(request, rec, "put_catalog_model", name, reason, lambda actor: reg.PutCatalogModel(
        rpb.PutCatalogModelRequest(model=model, actor=actor, reason=reason), **kw))
    return JSONResponse(operator_views.catalog_model(m))


async def remove_catalog_model(request: Request) -> Response:
    rec = await caller(request, "admin")
    name = request.path_params["name"]
    reason = _reason(request.query_params.get("reason"))
    reg, kw = _registry(request)
    await _act(request, rec, "remove_catalog_model", name, reason, lambda actor: reg.RemoveCatalogModel(
        rpb.RemoveCatalogModelRequest(name=name, actor=actor, reason=reason), **kw))
    return JSONResponse({"object": "catalog_model", "name": name, "deleted": True})


# ------------------------------------------------------------------ suspensions, trust, tokens

def _suspension(kind: str, suspended: bool):
    async def handler(request: Request) -> Response:
        rec = await caller(request, "admin")
        target = _id(request, f"{kind}_id")
        reason = _reason((await _body(request, {"reason"})).get("reason"))
        reg, kw = _registry(request)
        action = f"{'suspend' if suspended else 'unsuspend'}_{kind}"
        r = await _act(request, rec, action, str(uuid.UUID(bytes=target)), reason, lambda actor: reg.SetSuspended(
            rpb.SetSuspendedRequest(suspended=suspended, actor=actor, reason=reason, **{f"{kind}_id": target}), **kw))
        return JSONResponse({"object": "list", "data": [operator_views.node(n) for n in r.nodes]})
    return handler


def _trust(trusted: bool):
    async def handler(request: Request) -> Response:
        rec = await caller(request, "admin")
        provider_id = _id(request, "provider_id")
        reason = _reason((await _body(request, {"reason"})).get("reason"))
        reg, kw = _registry(request)
        r = await _act(request, rec, "trust_provider" if trusted else "untrust_provider", str(uuid.UUID(bytes=provider_id)),
                       reason, lambda actor: reg.SetProviderTrusted(rpb.SetProviderTrustedRequest(
                           provider_id=provider_id, trusted=trusted, actor=actor, reason=reason), **kw))
        return JSONResponse(operator_views.provider(r.provider))
    return handler


async def rotate_token(request: Request) -> Response:
    rec = await caller(request, "admin")
    provider_id = _id(request, "provider_id")
    reason = _reason((await _body(request, {"reason"})).get("reason"))
    reg, kw = _registry(request)
    r = await _act(request, rec, "rotate_provider_token", str(uuid.UUID(bytes=provider_id)), reason,
                   lambda actor: reg.RotateProviderToken(rpb.RotateProviderTokenRequest(
                       provider_id=provider_id, actor=actor, reason=reason), **kw))
    return JSONResponse({"object": "provider_token", "provider_id": str(uuid.UUID(bytes=provider_id)),
                         "provider_token": r.provider_token})


async def revoke_token(request: Request) -> Response:
    rec = await caller(request, "admin")
    provider_id = _id(request, "provider_id")
    reason = _reason((await _body(request, {"reason"})).get("reason"))
    reg, kw = _registry(request)
    r = await _act(request, rec, "revoke_provider_token", str(uuid.UUID(bytes=provider_id)), reason,
                   lambda actor: reg.RevokeProviderToken(rpb.RevokeProviderTokenRequest(
                       provider_id=provider_id, actor=actor, reason=reason), **kw))
    return JSONResponse({"object": "provider_token", "provider_id": str(uuid.UUID(bytes=provider_id)),
                         "revoked": True, "offline_node_ids": [n.hex() for n in r.node_ids]})


def _ban(banned: bool):
    async def handler(request: Request) -> Response:
        rec = await caller(request, "admin")
        body = await _body(request, {"host", "reason"})
        host = bodies.string(body, "host", required_=True, max_len=255)
        assert host is not None
        reason = _reason(body.get("reason"))
        reg, kw = _registry(request)
        r = await _act(request, rec, "ban_endpoint" if banned else "unban_endpoint", host, reason,
                       lambda actor: reg.SetEndpointBanned(rpb.SetEndpointBannedRequest(
                           host=host, banned=banned, actor=actor, reason=reason), **kw))
        return JSONResponse({"object": "endpoint_ban", "host": host, "banned": banned,
                             "offline_node_ids": [n.hex() for n in r.node_ids]})
    return handler


async def operator_actions(request: Request) -> Response:
    await caller(request, "admin")
    limit, after = params.limit(request), params.seq_cursor(request) or 0
    reg, kw = _registry(request)
    r = await rpc(reg.ListOperatorActions(rpb.ListOperatorActionsRequest(after_seq=after, limit=limit), **kw))
    return JSONResponse({"object": "list", "data": [operator_views.action(a) for a in r.actions],
                         "next_cursor": str(r.next_seq) if r.next_seq else None})


def routes() -> list[Route]:
    nodes, providers = "/v1/admin/nodes/{node_id}", "/v1/admin/providers/{provider_id}"
    return [
        Route("/v1/admin/catalog", list_catalog, methods=["GET"]),
        Route("/v1/admin/catalog/{name}", put_catalog_model, methods=["PUT"]),
        Route("/v1/admin/catalog/{name}", remove_catalog_model, methods=["DELETE"]),
        Route(f"{nodes}/suspend", _suspension("node", True), methods=["POST"]),
        Route(f"{nodes}/unsuspend", _suspension("node", False), methods=["POST"]),
        Route(f"{providers}/suspend", _suspension("provider", True), methods=["POST"]),
        Route(f"{providers}/unsuspend", _suspension("provider", False), methods=["POST"]),
        Route(f"{providers}/trust", _trust(True), methods=["POST"]),
        Route(f"{providers}/untrust", _trust(False), methods=["POST"]),
        Route(f"{providers}/rotate-token", rotate_token, methods=["POST"]),
        Route(f"{providers}/revoke-token", revoke_token, methods=["POST"]),
        Route("/v1/admin/endpoints/ban", _ban(True), methods=["POST"]),
        Route("/v1/admin/endpoints/unban", _ban(False), methods=["POST"]),
        Route("/v1/admin/operator-actions", operator_actions, methods=["GET"]),
    ]
