"""The OpenAPI description of the operator routes (gateway/operator_routes.py),
merged into the gateway's document by openapi.document(). Imports openapi
lazily: openapi imports this module."""

from __future__ import annotations

from idlegrid.gateway.operator_routes import REASON_CHARS_MAX
from idlegrid.gateway.operator_views import PRICE_MAX, TOLERANCE_MAX, UINT32_MAX

_NULL_STR = {"type": ["string", "null"]}
_REASON = {"type": "string", "minLength": 1, "maxLength": REASON_CHARS_MAX,
           "description": "why (1..1,024 printable characters), recorded with the admin key's id"}
_PRICE_IN = {"type": ["integer", "null"], "minimum": 0, "maximum": PRICE_MAX}
_CANARY_IN = {"type": "object", "additionalProperties": False, "properties": {
    "prompt": {**_NULL_STR, "description": "LLM: a raw prompt, run greedily"},
    "max_tokens": {"type": ["integer", "null"], "minimum": 0, "maximum": UINT32_MAX, "description": "LLM: 1..256"},
    "expected_text": {**_NULL_STR, "description": "LLM: the exact greedy output"},
    "kserve_request_json": {**_NULL_STR, "description": "tensor: a KServe v2 JSON infer body"},
    "kserve_expected_json": {**_NULL_STR, "description": "tensor: {\"outputs\": [...]} to match"},
    "tolerance": {"type": ["number", "null"], "minimum": 0, "maximum": TOLERANCE_MAX}}}
_CATALOG_IN = {"type": "object", "additionalProperties": False, "required": ["kind", "canaries", "reason"],
               "properties": {
                   "kind": {"enum": ["llm", "tensor"]},
                   "tokenizer": {**_NULL_STR, "description": "LLM: the platform's tokenizer id"},
                   "weights_digest": {**_NULL_STR, "description": "sha256:<64 hex>, or empty"},
                   "context_length": {"type": ["integer", "null"], "minimum": 0, "maximum": UINT32_MAX},
                   "canaries": {"type": "array", "items": _CANARY_IN, "description": "1..8 reference outputs"},
                   "max_price": {"type": ["object", "null"], "additionalProperties": False, "properties": {
                       "per_million_input_tokens": _PRICE_IN, "per_million_output_tokens": _PRICE_IN,
                       "per_request": _PRICE_IN}, "description": "the ceiling per unit (0: none)"},
                   "reason": _REASON}}


def _schemas():
    from idlegrid.gateway import openapi_schemas as S

    price = S.obj({"per_million_input_tokens": S.INT, "per_million_output_tokens": S.INT, "per_request": S.INT})
    canary = S.obj({"prompt": S.STR, "max_tokens": S.INT, "expected_text": S.STR, "kserve_request_json": S.STR,
                    "kserve_expected_json": S.STR, "tolerance": {"type": "number"}})
    model = S.obj({"object": {"const": "catalog_model"}, "name": S.STR, "kind": {"enum": ["llm", "tensor", "unknown"]},
                   "tokenizer": S.STR, "weights_digest": S.STR, "context_length": S.INT,
                   "canaries": {"type": "array", "items": canary}, "max_price": price, "updated_at": S.NULL_STR,
                   "updated_by": S.STR})
    node = {"type": "object", "required": ["node_id", "state", "state_detail", "trusted", "reputation"],
            "properties": {"node_id": S.STR, "state": S.STR, "state_detail": S.STR, "trusted": S.BOOL,
                           "reputation": S.OBJ}}
    nodes = S.obj({"object": {"const": "list"}, "data": {"type": "array", "items": node}})
    provider = S.obj({"object": {"const": "provider"}, "provider_id": S.NULL_UUID, "name": S.STR,
                      "account_id": S.NULL_UUID, "trusted": S.BOOL, "suspended": S.BOOL, "suspended_reason": S.STR,
                      "under_review": S.BOOL, "created_at": S.NULL_STR})
    action = S.obj({"object": {"const": "operator_action"}, "seq": S.INT, "at": S.NULL_STR, "actor": S.STR,
                    "action": S.STR, "target": S.STR, "reason": S.STR})
    offline = {"type": "array", "items": S.STR, "description": "the nodes that went offline (hex ids)"}
    return S, {
        "model": model, "models": S.obj({"object": {"const": "list"}, "data": {"type": "array", "items": model}}),
        "nodes": nodes, "provider": provider, "actions": S.page(action),
        "rotated": S.obj({"object": {"const": "provider_token"}, "provider_id": S.UUID,
                          "provider_token": {**S.STR, "description": "shown once"}}),
        "revoked": S.obj({"object": {"const": "provider_token"}, "provider_id": S.UUID, "revoked": {"const": True},
                          "offline_node_ids": offline}),
        "ban": S.obj({"object": {"const": "endpoint_ban"}, "host": S.STR, "banned": S.BOOL,
                      "offline_node_ids": offline}),
        "removed": S.obj({"object": {"const": "catalog_model"}, "name": S.STR, "deleted": {"const": True}}),
    }


def paths() -> dict:
    from idlegrid.gateway import openapi as o

    S, out = _schemas()
    adm = "Admins"
    writes = (*o._BASE, 400, 404, 409, 413, 502, 504)
    reason_body = S.obj({"reason": _REASON}, closed=True)
    host_body = S.obj({"host": {"type": "string", "maxLength": 255, "description": "a DNS name or IP literal"},
                       "reason": _REASON}, closed=True)
    remove = o._op("removeCatalogModel", "Remove a model from the catalog: nodes' offers of it stop being routable",
                   adm, path=("name",), errors=writes, ok=out["removed"],
                   query=(("reason", _REASON, "why"),))
    remove["parameters"][-1]["required"] = True

    def control(op_id: str, summary: str, ok: dict, path: str, body: dict = reason_body) -> dict:
        return {"post": o._op(op_id, summary, adm, path=(path,) if path else (), body=body, errors=writes, ok=ok)}

    nodes, providers = "/v1/admin/nodes/{node_id}", "/v1/admin/providers/{provider_id}"
    return {
        "/v1/admin/catalog": {"get": o._op("listCatalog", "The model catalog, by name", adm,
                                           errors=(*o._BASE, 502, 504), ok=out["models"])},
        "/v1/admin/catalog/{name}": {
            "put": o._op("putCatalogModel", "Add or replace a catalog model (kind, tokenizer, weights digest, "
                         "context length, canaries with reference outputs, price ceiling)", adm, path=("name",),
                         body=_CATALOG_IN, errors=writes, ok=out["model"]),
            "delete": remove},
        f"{nodes}/suspend": control("suspendNode", "Suspend a node: no jobs; only an operator lifts it",
                                    out["nodes"], "node_id"),
        f"{nodes}/unsuspend": control("unsuspendNode", "Lift a node's suspension: it is verified again",
                                      out["nodes"], "node_id"),
        f"{providers}/suspend": control("suspendProvider", "Suspend a provider and every node of it",
                                        out["nodes"], "provider_id"),
        f"{providers}/unsuspend": control("unsuspendProvider", "Lift a provider's suspension", out["nodes"],
                                          "provider_id"),
        f"{providers}/trust": control("trustProvider", "Trust a provider: its nodes run spot checks",
                                      out["provider"], "provider_id"),
        f"{providers}/untrust": control("untrustProvider", "Stop trusting a provider", out["provider"],
                                        "provider_id"),
        f"{providers}/rotate-token": control("rotateProviderToken", "A new provider token (shown once); the old one "
                                             "stops at once", out["rotated"], "provider_id"),
        f"{providers}/revoke-token": control("revokeProviderToken", "Revoke the provider token and its nodes' "
                                             "tokens: its nodes go offline", out["revoked"], "provider_id"),
        "/v1/admin/endpoints/ban": control("banEndpoint", "Ban a direct endpoint host: registration is refused, "
                                           "its nodes go offline", out["ban"], "", host_body),
        "/v1/admin/endpoints/unban": control("unbanEndpoint", "Lift a host's ban", out["ban"], "", host_body),
        "/v1/admin/operator-actions": {"get": o._op(
            "listOperatorActions", "Every operator action (who, what, on what, why), oldest first", adm,
            query=o._PAGE_Q, errors=(*o._BASE, 400, 502, 504), ok=out["actions"])},
    }


def add_to(document_paths: dict) -> dict:
    for path, ops in paths().items():
        document_paths.setdefault(path, {}).update(ops)
    return document_paths
