"""The OpenAPI description of the console's routes (merged into the
gateway's document by openapi.document()): its REST routes and its pages.
Imports openapi lazily: openapi imports this module."""

from __future__ import annotations

from idlegrid.gateway.keys import EXPIRES_IN_S_MAX


def _text_404(op: dict, media: str) -> dict:
    op["responses"]["404"] = {"description": "no such page, fragment or asset",
                              "content": {media: {"schema": {"type": "string"}}}}
    return op


def paths() -> dict:
    from idlegrid.gateway import openapi as o
    from idlegrid.gateway import openapi_schemas as S

    part, prov, adm, con = "Partners", "Providers", "Admins", "Console"
    rpc_errors = (*o._BASE, 400, 502, 504)
    html = ("text/html",)
    key_body = S.obj({"expires_in_s": {"type": "integer", "minimum": 1, "maximum": EXPIRES_IN_S_MAX}},
                     optional=("expires_in_s",), closed=True)
    return {
        "/v1/whoami": {"get": o._op("whoami", "The calling key: id, scope, account, expiry and the console views "
                                    "it may open", part)},
        "/v1/account/keys": {
            "get": o._op("listOwnKeys", "The account's own API keys (ids and times; never a secret)", part),
            "post": o._op("createOwnKey", "A new key of the caller's scope for its own account, shown once (at "
                          "most 20 live keys per account)", part, ok_status=201, body=key_body,
                          errors=(*o._BASE, 400, 409, 413))},
        "/v1/account/keys/{key_id}": {"delete": o._op("revokeOwnKey", "Revoke one of the account's own keys, at "
                                                      "once", part, path=("key_id",), errors=(*o._BASE, 400, 404))},
        "/v1/provider/earnings/buckets": {"get": o._op(
            "getEarningsBuckets", "Earnings per time bucket: released (settled) and held (recorded, not yet "
            "settled); by default the last 48 hours by hour or 30 days by day", prov,
            query=(*o._ACCOUNT_Q, *o._WINDOW_Q, ("bucket", S.STR, "minute, hour, day, week or seconds")),
            errors=rpc_errors)},
        "/v1/provider/jobs": {"get": o._op(
            "listProviderJobs", "Per-job line items, newest first, filtered by node and model", prov,
            query=(*o._ACCOUNT_Q, *o._WINDOW_Q, ("node_id", S.STR, "a node id (hex)"),
                   ("model", S.STR, "a model name"), *o._PAGE_Q), errors=rpc_errors)},
        "/v1/provider/transactions": {"get": o._op(
            "listProviderTransactions", "Ledger transfers of the provider account (earnings, payouts), newest "
            "first", prov, query=(*o._ACCOUNT_Q, *o._PAGE_Q), errors=rpc_errors)},
        "/v1/admin/accounts": {"get": o._op(
            "listAccounts", "Accounts created through the gateway, with their balances, newest first", adm,
            query=(("kind", {"enum": ["any", "consumer", "provider"]}, "filter by kind"), *o._PAGE_Q),
            errors=rpc_errors)},
        "/v1/admin/nodes": {"get": o._op("listAllNodes", "Every node of the registry, with its state and reason",
                                         adm, query=o._PAGE_Q, errors=rpc_errors)},
        "/console": {"get": o._op("console", "The web console: sign in with an API key", con, secure=False,
                                  errors=(), ok=S.STR, ok_types=html)},
        "/console/{view}": {"get": _text_404(o._op(
            "consoleView", "A console view (partner, provider or admin); the browser reads the data with the key",
            con, secure=False, errors=(), ok=S.STR, ok_types=html, path=("view",)), "text/html")},
        "/console/fragments/{name}": {"get": _text_404(o._op(
            "consoleFragment", "A fragment of a view (HTML): the answer of the REST route it shows; an error of "
            "that route is shown in the fragment", con, errors=(), ok=S.STR, ok_types=html, path=("name",)),
            "text/html")},
        "/console/static/{path}": {"get": _text_404(o._op(
            "consoleAsset", "A static asset of the console (served from the package)", con, secure=False,
            errors=(), ok=S.STR, ok_types=("text/javascript", "text/css", "text/plain"), path=("path",)),
            "text/plain")},
    }


def add_to(document_paths: dict) -> dict:
    """``document_paths`` with the console's operations added (a path both
    describe keeps the operations of each)."""
    for path, ops in paths().items():
        document_paths.setdefault(path, {}).update(ops)
    return document_paths
