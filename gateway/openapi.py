"""The OpenAPI 3.1 document of the gateway (GET /openapi.json), written by
hand next to the routes, and GET /docs: Swagger UI reading it. A test checks
that every route of the app is described here."""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from idlegrid.common.paging import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX

VERSION = "0.1.0"
_ERRORS = {
    400: "invalid request", 401: "missing, malformed, unknown, revoked or expired API key",
    402: "not enough credits", 403: "the key's scope does not allow this, or an admin limit refuses it", 404: "unknown model, account or key", 409: "conflict",
    413: "request too large",
    429: "rate limited, per key or per client address, or too many of the key's requests in flight "
         "(see Retry-After)",
    503: "no node available, a backend is down or the database is busy (see Retry-After)",
    504: "deadline exceeded",
}
_ERROR = {"$ref": "#/components/schemas/Error"}
_OBJ = {"type": "object"}
_STR = {"type": "string"}
_INT = {"type": "integer"}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary: str, tag: str, *, errors: tuple[int, ...] = (401, 403, 429), body: dict | None = None,
        ok: dict | None = None, ok_status: int = 200, query: tuple[tuple[str, dict, str], ...] = (),
        path: tuple[str, ...] = (), secure: bool = True, stream: bool = False, description: str = "") -> dict:
    responses: dict = {str(ok_status): {"description": "OK", **_json(ok or _OBJ)}}
    if stream:
        responses[str(ok_status)]["content"]["text/event-stream"] = {"schema": _STR}
    for code in errors:
        responses[str(code)] = {"description": _ERRORS[code], **_json(_ERROR)}
    op: dict = {"summary": summary, "tags": [tag], "responses": responses}
    if description:
        op["description"] = description
    if secure:
        op["security"] = [{"apiKey": []}]
    parameters = [{"name": n, "in": "path", "required": True, "schema": _STR} for n in path]
    parameters += [{"name": n, "in": "query", "required": False, "schema": s, "description": d} for n, s, d in query]
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    return op


_ACCOUNT_Q = (("account_id", _STR, "admin keys: the account to read"),)
_WINDOW_Q = (("since", _STR, "RFC 3339 time or unix seconds (inclusive)"),
             ("until", _STR, "RFC 3339 time or unix seconds (exclusive)"))
_PAGE_Q = (("limit", _INT, f"page size, 1..{PAGE_SIZE_MAX} (default {PAGE_SIZE_DEFAULT})"),
           ("cursor", _STR, "next_cursor of the previous page"))
_TEXT_ERRORS = (400, 401, 402, 403, 404, 409, 413, 429, 503, 504)
_CHAT = {"type": "object", "required": ["model", "messages"], "properties": {
    "model": _STR, "messages": {"type": "array", "items": {"type": "object", "required": ["role", "content"],
                                                           "properties": {"role": {"enum": ["system", "developer",
                                                                                            "user", "assistant"]},
                                                                          "content": _STR}}},
    "max_tokens": _INT, "max_completion_tokens": _INT, "temperature": {"type": "number"},
    "top_p": {"type": "number"}, "stop": {}, "seed": _INT, "n": {"const": 1}, "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}}}}
_COMPLETION = {"type": "object", "required": ["model", "prompt"], "properties": {
    **{k: v for k, v in _CHAT["properties"].items() if k not in ("messages", "max_completion_tokens")},
    "prompt": _STR}}
_MONEY = {"type": "object", "required": ["amount_micros", "idempotency_key"],
          "properties": {"amount_micros": _INT, "idempotency_key": _STR}}
_CAPS = ("Capped per call, per admin key per UTC day and for all admin keys per UTC day "
         "(IDLEGRID_GATEWAY_{action}_CALL_MAX_MICROS, _KEY_DAY_MAX_MICROS, _DAY_MAX_MICROS): over a cap, 403 "
         "naming it, and nothing is done. Every call is audited (GET /v1/admin/audit).")
_NULL_STR = {"type": ["string", "null"]}
_AUDIT_PAGE = {"type": "object", "required": ["data"], "properties": {
    "object": {"const": "list"}, "next_cursor": _NULL_STR,
    "data": {"type": "array", "items": {"type": "object", "properties": {
        "seq": _INT, "at": _STR, "actor": {"type": "string", "description": "the admin key id, or cli"},
        "action": {"enum": ["create_account", "create_key", "revoke_key", "topup", "payout"]},
        "result": {"enum": ["started", "ok", "already_applied", "refused", "failed"]},
        "account_id": _NULL_STR, "key_id": _NULL_STR, "amount_micros": {"type": ["integer", "null"]},
        "idempotency_key": _NULL_STR, "detail": _STR}}}}}
_MODEL = ("model",)
_MODEL_V = ("model", "version")
_KSERVE_INFER = {"type": "object", "required": ["inputs"], "properties": {
    "id": _STR, "parameters": _OBJ, "inputs": {"type": "array", "items": _OBJ}, "outputs": {"type": "array",
                                                                                         "items": _OBJ}}}


def document() -> dict:
    v1 = "OpenAI-compatible"
    paths = {
        "/v1/models": {"get": _op("Models served by ready nodes, with price ranges", v1, errors=(401, 429, 503))},
        "/v1/models/{model}": {"get": _op("One model", v1, path=_MODEL, errors=(401, 404, 429, 503))},
        "/v1/chat/completions": {"post": _op(
            "Chat completion (stream with SSE)", v1, body=_CHAT, errors=_TEXT_ERRORS, stream=True,
            description="Headers: x-idlegrid-job-id, x-idlegrid-node, x-idlegrid-cost-micros (not on streams: "
                        "the last chunk carries usage.cost_micros). Idempotency-Key makes a retry safe.")},
        "/v1/completions": {"post": _op("Text completion (stream with SSE)", v1, body=_COMPLETION,
                                        errors=_TEXT_ERRORS, stream=True)},
        "/v1/embeddings": {"post": _op("Embeddings (where a node serves an embedding model)", v1,
                                       body={"type": "object", "required": ["model", "input"]},
                                       errors=(400, 401, 403, 404, 413, 429))},
        "/v1/account": {"get": _op("The account's balances", "Partners", query=_ACCOUNT_Q, errors=(400, 401, 403,
                                                                                                   404, 429))},
        "/v1/account/usage": {"get": _op(
            "Usage: aggregates per time bucket and per-job line items", "Partners",
            query=(*_ACCOUNT_Q, *_WINDOW_Q, ("bucket", _STR, "minute, hour, day, week or seconds"),
                   ("group_by", {"enum": ["none", "model", "node"]}, "grouping of the buckets"), *_PAGE_Q),
            errors=(400, 401, 403, 429))},
        "/v1/account/transactions": {"get": _op("Ledger transfers of the account, newest first", "Partners",
                                                query=(*_ACCOUNT_Q, *_PAGE_Q), errors=(400, 401, 403, 429))},
        "/v1/provider/earnings": {"get": _op(
            "Earnings: settled, paid out, pending; by node and model; per-job line items", "Providers",
            query=(*_ACCOUNT_Q, *_WINDOW_Q, *_PAGE_Q), errors=(400, 401, 403, 404, 429))},
        "/v1/provider/nodes": {"get": _op("The provider's nodes", "Providers", query=(*_ACCOUNT_Q, *_PAGE_Q),
                                          errors=(400, 401, 403, 404, 429))},
        "/v1/admin/accounts": {"post": _op(
            "Create a consumer or provider account (a provider also gets its registry token, shown once)",
            "Admins", ok_status=201, errors=(400, 401, 403, 409, 429),
            body={"type": "object", "required": ["kind", "name"],
                  "properties": {"kind": {"enum": ["consumer", "provider"]}, "name": _STR}})},
        "/v1/admin/keys": {"post": _op(
            "Create an API key (shown once)", "Admins", ok_status=201, errors=(400, 401, 403, 404, 429),
            body={"type": "object", "required": ["scope"], "properties": {
                "scope": {"enum": ["consumer", "provider", "admin"]}, "account_id": _STR,
                "rate_per_s": _INT, "burst": _INT,
                "expires_in_s": {"type": "integer", "minimum": 1,
                                 "description": "life of the key; admin keys: default and at most "
                                                "IDLEGRID_GATEWAY_ADMIN_KEY_TTL_S"}}})},
        "/v1/admin/keys/{key_id}": {"delete": _op("Revoke an API key, at once", "Admins", path=("key_id",),
                                                  errors=(401, 403, 404, 429))},
        "/v1/admin/accounts/{account_id}/topup": {"post": _op(
            "Add credits to a consumer account (idempotent by key)", "Admins", path=("account_id",), body=_MONEY,
            errors=(400, 401, 403, 404, 409, 429, 503), description=_CAPS.format(action="TOPUP"))},
        "/v1/admin/accounts/{account_id}/payout": {"post": _op(
            "Pay a provider out (idempotent by key)", "Admins", path=("account_id",), body=_MONEY,
            errors=(400, 401, 402, 403, 404, 409, 429, 503), description=_CAPS.format(action="PAYOUT"))},
        "/v1/admin/audit": {"get": _op(
            "The audit trail of keys and admin actions, newest first", "Admins", query=_PAGE_Q,
            errors=(400, 401, 403, 429), ok=_AUDIT_PAGE)},
        "/v2": {"get": _op("KServe v2 server metadata", "KServe v2", secure=False, errors=())},
        "/v2/health/live": {"get": _op("Live", "KServe v2", secure=False, errors=())},
        "/v2/health/ready": {"get": _op("Ready", "KServe v2", secure=False, errors=(503,))},
        "/v2/models/{model}": {"get": _op("Model metadata", "KServe v2", path=_MODEL, errors=(401, 404, 503))},
        "/v2/models/{model}/ready": {"get": _op("Model ready", "KServe v2", path=_MODEL, errors=(401, 404))},
        "/v2/models/{model}/infer": {"post": _op(
            "Inference (JSON tensors, or Triton's binary tensor data extension)", "KServe v2", path=_MODEL,
            body=_KSERVE_INFER, errors=_TEXT_ERRORS)},
        "/v2/models/{model}/versions/{version}": {"get": _op("Model metadata", "KServe v2", path=_MODEL_V,
                                                             errors=(401, 404, 503))},
        "/v2/models/{model}/versions/{version}/ready": {"get": _op("Model ready", "KServe v2", path=_MODEL_V,
                                                                   errors=(401, 404))},
        "/v2/models/{model}/versions/{version}/infer": {"post": _op("Inference", "KServe v2", path=_MODEL_V,
                                                                    body=_KSERVE_INFER, errors=_TEXT_ERRORS)},
        "/healthz": {"get": _op("The process is alive", "Operations", secure=False, errors=())},
        "/readyz": {"get": _op("Database and backend services answer", "Operations", secure=False, errors=(503,))},
        "/metrics": {"get": _op("Prometheus metrics", "Operations", secure=False, errors=(),
                                ok={"type": "string"})},
        "/openapi.json": {"get": _op("This document", "Operations", secure=False, errors=())},
        "/docs": {"get": _op("Interactive documentation", "Operations", secure=False, errors=(),
                             ok={"type": "string"})},
        "/docs/assets/{name}": {"get": _op("A static asset of the documentation page (served from the package)",
                                           "Operations", secure=False, errors=(404,), ok={"type": "string"},
                                           path=("name",))},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "idlegrid gateway", "version": VERSION,
                 "description": "Inference on contributed GPUs: OpenAI-compatible and KServe v2 APIs, "
                                "partner accounts, provider earnings, admin. Amounts are integer micro-credits."},
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "Authorization: Bearer ig_<key id>_<secret>"}},
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "properties": {"message": _STR, "type": _STR, "param": {"type": ["string", "null"]},
                                                 "code": {"type": ["string", "null"]}}}}}},
        },
    }


# The interactive API docs: Swagger UI served from the installed package
# (swagger-ui-bundle-v2), never from a CDN, so they work offline and under a
# strict Content-Security-Policy (no inline script).
_SWAGGER_DIR = Path(swagger_ui_bundle.swagger_ui_path)
_ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"})
_DOCS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>idlegrid gateway API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png"></head>
<body><main id="ui" data-url="/openapi.json"></main>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/init.js"></script>
</body></html>"""
_INIT = b'SwaggerUIBundle({url: document.getElementById("ui").dataset.url, dom_id: "#ui"});\n'
_DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
}
_TYPES = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}


async def openapi_json(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


async def docs(request: Request) -> Response:
    return HTMLResponse(_DOCS, headers=_DOCS_HEADERS)


async def docs_asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name == "init.js":
        return Response(_INIT, media_type="text/javascript", headers=_DOCS_HEADERS)
    if name not in _ASSETS:
        return JSONResponse({"error": {"message": "no such asset", "type": "invalid_request_error",
                                       "param": None, "code": "not_found"}}, status_code=404)
    return FileResponse(_SWAGGER_DIR / name, media_type=_TYPES[Path(name).suffix],
                        headers={**_DOCS_HEADERS, "Cache-Control": "public, max-age=86400"})


def routes() -> list[Route]:
    return [Route("/openapi.json", openapi_json, methods=["GET"]), Route("/docs", docs, methods=["GET"]),
            Route("/docs/assets/{name}", docs_asset, methods=["GET"])]
