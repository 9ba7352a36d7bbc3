"""The OpenAPI 3.1 document of the gateway (GET /openapi.json), written by
hand next to the routes, and GET /docs: Swagger UI reading it. A test checks
that every route of the app is described here."""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from idlegrid.common.paging import PAGE_SIZE_DEFAULT
from idlegrid.gateway import openapi_operator as operator_doc
from idlegrid.gateway import openapi_schemas as S
from idlegrid.gateway.console import api_doc as console_doc

VERSION = "0.1.0"
_ERRORS = {
    400: "invalid request", 401: "missing, malformed, unknown, revoked or expired API key",
    402: "not enough credits",
    403: "the key's scope does not allow this, or an admin limit refuses it", 404: "unknown model, account or key",
    409: "conflict", 413: "request too large",
    429: "rate limited, per key or per client address, or too many of the key's requests in flight "
         "(see Retry-After)",
    502: "a backend service failed", 503: "no node available, a backend is down or the database is busy "
                                         "(see Retry-After)",
    504: "deadline exceeded",
}
# What any call that reads keys or backends may answer besides its own errors.
_BASE = (401, 403, 429, 503)
_TEXT_ERRORS = (400, 401, 402, 403, 404, 409, 413, 429, 502, 503, 504)
_PAGE_Q = (("limit", S.LIMIT_Q, "page size (default {PAGE_SIZE_DEFAULT})"),
           ("cursor", S.CURSOR_Q, "next_cursor of the previous page"))
_ACCOUNT_Q = (("account_id", S.ACCOUNT_ID_Q, "the account to read"),)
_WINDOW_Q = (("since", S.STR, "RFC 3339 time or unix seconds (inclusive)"),
             ("until", S.STR, "RFC 3339 time or unix seconds (exclusive)"))
_CAPS = ("Capped per call, per admin key per UTC day and for all admin keys per UTC day "
         "(IDLEGRID_GATEWAY_{action}_CALL_MAX_MICROS, _KEY_DAY_MAX_MICROS, _DAY_MAX_MICROS): over a cap, 403 "
         "naming it, and nothing is done. Every call is audited (GET /v1/admin/audit).")
_EMPTY = object()  # an answer without a body


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _op(op_id: str, summary: str, tag: str, *, errors: tuple[int, ...] = _BASE, body: dict | None = None,
        ok: object = S.OBJ, ok_status: int = 200, ok_types: tuple[str, ...] = ("application/json",),
        query: tuple[tuple[str, dict, str], ...] = (), path: tuple[str, ...] = (), secure: bool = True,
        stream: bool = False, kserve: bool = False, links: dict | None = None, description: str = "",
        body_required: bool = True) -> dict:
    answer: dict = {"description": "OK"}
    if ok is not _EMPTY:
        answer["content"] = {t: {"schema": ok} for t in ok_types}
    if stream:
        answer["content"]["text/event-stream"] = {"schema": S.STR}
    if links:
        answer["links"] = links
    responses: dict = {str(ok_status): answer}
    error = S.ref("KServeError" if kserve else "Error")
    for code in errors:
        responses[str(code)] = {"description": _ERRORS[code], **_json(error)}
    op: dict = {"operationId": op_id, "summary": summary, "tags": [tag], "responses": responses}
    if description:
        op["description"] = description
    op["security"] = [{"apiKey": []}] if secure else []
    parameters = [{"name": n, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
                  for n in path]
    parameters += [{"name": n, "in": "query", "required": False, "schema": s, "description": d.format(
        PAGE_SIZE_DEFAULT=PAGE_SIZE_DEFAULT)} for n, s, d in query]
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": body_required, **_json(body)}
    return op


def _provider_header(op: dict) -> dict:
    """The KServe infer's X-Idlegrid-Provider header (OpenRouter's provider object as JSON)."""
    op.setdefault("parameters", []).append({"name": "X-Idlegrid-Provider", "in": "header", "required": False,
                                            "schema": S.PROVIDER_HEADER})
    return op


def _link(op_id: str, description: str, **parameters: str) -> dict:
    """An OpenAPI link: what a client (and the stateful fuzzer) does next."""
    return {"operationId": op_id, "description": description,
            "parameters": {k.replace("__", "."): v for k, v in parameters.items()}}


_ACCOUNT_LINKS = {
    "TopUp": _link("topUp", "credit the new account", path__account_id="$response.body#/account_id"),
    "PayOut": _link("payOut", "pay the new account out", path__account_id="$response.body#/account_id"),
    "ReadAccount": _link("getAccount", "read it", query__account_id="$response.body#/account_id"),
    "ReadUsage": _link("getUsage", "its usage", query__account_id="$response.body#/account_id"),
    "ReadTransactions": _link("getTransactions", "its transfers", query__account_id="$response.body#/account_id"),
    "ReadEarnings": _link("getEarnings", "its earnings", query__account_id="$response.body#/account_id"),
    "ReadNodes": _link("listNodes", "its nodes", query__account_id="$response.body#/account_id"),
    "CreateKey": {"operationId": "createKey", "description": "a key for the new account",
                  "requestBody": {"scope": "$response.body#/kind", "account_id": "$response.body#/account_id"}},
}
_KEY_LINKS = {
    "RevokeKey": _link("revokeKey", "revoke it", path__key_id="$response.body#/key_id"),
    "UseKey": _link("listModels", "use it", header__Authorization="Bearer {$response.body#/key}"),
    "UseKeyOnAccount": _link("getAccount", "read its account with it",
                             header__Authorization="Bearer {$response.body#/key}"),
}
_MONEY_LINKS = {
    "ReadAccount": _link("getAccount", "the balance after", query__account_id="$response.body#/account/account_id"),
    "ReadTransactions": _link("getTransactions", "the transfer",
                              query__account_id="$response.body#/account/account_id"),
}


def _paths() -> dict:
    v1, part, prov, adm, ks, ops = "OpenAI-compatible", "Partners", "Providers", "Admins", "KServe v2", "Operations"
    model, model_v = ("model",), ("model", "version")
    return {
        "/v1/models": {"get": _op("listModels", "Models served by ready nodes, with price ranges", v1,
                                  ok=S.ref("ModelList"))},
        "/v1/models/{model}": {"get": _op("getModel", "One model", v1, path=model, errors=(*_BASE, 404),
                                          ok=S.ref("Model"))},
        "/v1/chat/completions": {"post": _op(
            "createChatCompletion", "Chat completion (stream with SSE)", v1, body=S.CHAT, errors=_TEXT_ERRORS,
            stream=True, ok=S.ref("ChatCompletion"),
            description="Headers: x-idlegrid-job-id, x-idlegrid-node, x-idlegrid-cost-micros (not on streams: "
                        "the last chunk carries usage.cost_micros). Idempotency-Key makes a retry safe. "
                        "503 when no ready node serves the model (code no_node_available), or none within "
                        "provider.max_price (code no_node_within_max_price); nothing is charged then.")},
        "/v1/completions": {"post": _op("createCompletion", "Text completion (stream with SSE)", v1,
                                        body=S.COMPLETION, errors=_TEXT_ERRORS, stream=True,
                                        ok=S.ref("TextCompletion"))},
        "/v1/embeddings": {"post": _op("createEmbedding", "Embeddings (where a node serves an embedding model)",
                                       v1, body=S.EMBEDDINGS, errors=(*_BASE, 400, 404, 413))},
        "/v1/account": {"get": _op("getAccount", "The account's balances", part, query=_ACCOUNT_Q,
                                   errors=(*_BASE, 400, 404, 502, 504), ok=S.ref("Account"))},
        "/v1/account/usage": {"get": _op(
            "getUsage", "Usage: aggregates per time bucket and per-job line items", part,
            query=(*_ACCOUNT_Q, *_WINDOW_Q, ("bucket", S.STR, "minute, hour, day, week or seconds"),
                   ("group_by", {"enum": ["none", "model", "node"]}, "grouping of the buckets"), *_PAGE_Q),
            errors=(*_BASE, 400, 502, 504), ok=S.ref("Usage"))},
        "/v1/account/transactions": {"get": _op(
            "getTransactions", "Ledger transfers of the account, newest first", part, query=(*_ACCOUNT_Q, *_PAGE_Q),
            errors=(*_BASE, 400, 404, 502, 504), ok=S.ref("TransactionPage"))},
        "/v1/provider/earnings": {"get": _op(
            "getEarnings", "Earnings: settled, paid out, pending; by node and model; per-job line items", prov,
            query=(*_ACCOUNT_Q, *_WINDOW_Q, *_PAGE_Q), errors=(*_BASE, 400, 404, 502, 504), ok=S.ref("Earnings"))},
        "/v1/provider/nodes": {"get": _op("listNodes", "The provider's nodes", prov, query=(*_ACCOUNT_Q, *_PAGE_Q),
                                          errors=(*_BASE, 400, 404, 502, 504), ok=S.ref("NodePage"))},
        "/v1/admin/accounts": {"post": _op(
            "createAccount",
            "Create a consumer or provider account (a provider also gets its registry token, shown once)",
            adm, ok_status=201, errors=(*_BASE, 400, 409, 502, 504), body=S.CREATE_ACCOUNT,
            ok=S.ref("CreatedAccount"), links=_ACCOUNT_LINKS)},
        "/v1/admin/keys": {"post": _op(
            "createKey", "Create an API key (shown once)", adm, ok_status=201, errors=(*_BASE, 400, 404, 502, 504),
            body=S.CREATE_KEY, ok=S.ref("CreatedKey"), links=_KEY_LINKS)},
        "/v1/admin/keys/{key_id}": {"delete": _op("revokeKey", "Revoke an API key, at once", adm, path=("key_id",),
                                                  errors=(*_BASE, 404), ok=S.ref("RevokedKey"))},
        "/v1/admin/accounts/{account_id}/topup": {"post": _op(
            "topUp", "Add credits to a consumer account (idempotent by key)", adm, path=("account_id",),
            body=S.MONEY, errors=(*_BASE, 400, 404, 409, 502, 504), description=_CAPS.format(action="TOPUP"),
            ok=S.ref("MoneyOperation"), links=_MONEY_LINKS)},
        "/v1/admin/accounts/{account_id}/payout": {"post": _op(
            "payOut", "Pay a provider out (idempotent by key)", adm, path=("account_id",), body=S.MONEY,
            errors=(*_BASE, 400, 402, 404, 409, 502, 504), description=_CAPS.format(action="PAYOUT"),
            ok=S.ref("MoneyOperation"), links=_MONEY_LINKS)},
        "/v1/admin/audit": {"get": _op(
            "getAudit", "The audit trail of keys and admin actions, newest first", adm, query=_PAGE_Q,
            errors=(*_BASE, 400), ok=S.ref("AuditPage"))},
        "/v2": {"get": _op("serverMetadata", "KServe v2 server metadata", ks, secure=False, errors=(), kserve=True,
                           ok=S.ref("ServerMetadata"))},
        "/v2/health/live": {"get": _op("serverLive", "Live (no body)", ks, secure=False, errors=(), ok=_EMPTY)},
        "/v2/health/ready": {"get": _op("serverReady", "Ready (no body; 503 without it)", ks, secure=False,
                                        errors=(), ok=_EMPTY)},
        "/v2/models/{model}": {"get": _op("modelMetadata", "Model metadata", ks, path=model, kserve=True,
                                          errors=(*_BASE, 404, 502, 504), ok=S.ref("ModelMetadata"))},
        "/v2/models/{model}/ready": {"get": _op("modelReady", "Model ready (no body)", ks, path=model, kserve=True,
                                                errors=(*_BASE, 404), ok=_EMPTY)},
        "/v2/models/{model}/infer": {"post": _provider_header(_op(
            "modelInfer", "Inference (JSON tensors, or Triton's binary tensor data extension)", ks, path=model,
            body=S.KSERVE_INFER, errors=_TEXT_ERRORS, kserve=True, ok=S.ref("InferResponse"),
            ok_types=("application/json", "application/octet-stream")))},
        "/v2/models/{model}/versions/{version}": {"get": _op(
            "modelVersionMetadata", "Model metadata", ks, path=model_v, kserve=True,
            errors=(*_BASE, 404, 502, 504), ok=S.ref("ModelMetadata"))},
        "/v2/models/{model}/versions/{version}/ready": {"get": _op(
            "modelVersionReady", "Model ready (no body)", ks, path=model_v, kserve=True, errors=(*_BASE, 404),
            ok=_EMPTY)},
        "/v2/models/{model}/versions/{version}/infer": {"post": _provider_header(_op(
            "modelVersionInfer", "Inference", ks, path=model_v, body=S.KSERVE_INFER, errors=_TEXT_ERRORS,
            kserve=True, ok=S.ref("InferResponse"), ok_types=("application/json", "application/octet-stream")))},
        "/healthz": {"get": _op("healthz", "The process is alive", ops, secure=False, errors=(), ok=S.ref("Live"))},
        "/readyz": {"get": _op("readyz", "Database and backend services answer", ops, secure=False, errors=(),
                               ok=S.ref("Ready"))},
        "/metrics": {"get": _op("metrics", "Prometheus metrics", ops, secure=False, errors=(), ok=S.STR,
                                ok_types=("text/plain",))},
        "/openapi.json": {"get": _op("openapi", "This document", ops, secure=False, errors=(), ok=S.OBJ)},
        "/docs": {"get": _op("docs", "Interactive documentation", ops, secure=False, errors=(), ok=S.STR,
                             ok_types=("text/html",))},
        "/docs/assets/{name}": {"get": _op(
            "docsAsset", "A static asset of the documentation page (served from the package)", ops, secure=False,
            errors=(404,), ok=S.STR, path=("name",), ok_types=("text/css", "text/javascript", "image/png"))},
    }


def document() -> dict:
    paths = operator_doc.add_to(console_doc.add_to(_paths()))  # two answers that differ from the pattern of _op:
    paths["/v2/health/ready"]["get"]["responses"]["503"] = {"description": "the gateway's node view is not synced"}
    paths["/readyz"]["get"]["responses"]["503"] = {"description": "a dependency does not answer",
                                                   **_json(S.ref("Ready"))}
    return {
        "openapi": "3.1.0",
        "info": {"title": "idlegrid gateway", "version": VERSION,
                 "description": "Inference on contributed GPUs: OpenAI-compatible and KServe v2 APIs, "
                                "partner accounts, provider earnings, admin. Amounts are integer micro-credits."},
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "Authorization: Bearer ig_<key id>_<secret>"}},
            "schemas": S.COMPONENTS,
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
