"""JSON of the operator routes (operator_routes.py): catalog entries (and
the request body that makes one), providers, nodes with their reputation,
and the registry's operator actions."""

from __future__ import annotations

from idlegrid.gateway import bodies, views
from idlegrid.gateway.errors import bad_request
from idlegrid.registry.v1 import registry_pb2 as rpb

UINT32_MAX = (1 << 32) - 1
PRICE_MAX = 10**12
TOLERANCE_MAX = 1e9
KINDS = {"llm": rpb.MODEL_KIND_LLM, "tensor": rpb.MODEL_KIND_TENSOR}
CATALOG_FIELDS = ("kind", "tokenizer", "weights_digest", "context_length", "canaries", "max_price")
CANARY_STRINGS = ("prompt", "expected_text", "kserve_request_json", "kserve_expected_json")
PRICES = ("per_million_input_tokens", "per_million_output_tokens", "per_request")


def _object(value: object, param: str) -> dict:
    if not isinstance(value, dict):
        raise bad_request(f"'{param}' must be an object", param=param, code="invalid_type")
    return value


def _canary(raw: object, i: int) -> rpb.CatalogCanary:
    c = _object(raw, f"canaries[{i}]")
    bodies.only(c, {*CANARY_STRINGS, "max_tokens", "tolerance"})
    out = rpb.CatalogCanary()
    for name in CANARY_STRINGS:
        value = bodies.string(c, name)
        if value is not None:
            setattr(out, name, value)
    out.max_tokens = bodies.integer(c, "max_tokens", lo=0, hi=UINT32_MAX) or 0
    out.tolerance = bodies.number(c, "tolerance", lo=0.0, hi=TOLERANCE_MAX) or 0.0
    return out


def catalog_request(name: str, body: dict) -> rpb.CatalogModel:
    """The CatalogModel a PUT body describes (types checked here; the
    registry checks every limit)."""
    kind = bodies.string(body, "kind", required_=True, max_len=16)
    if kind not in KINDS:
        raise bad_request("'kind' must be llm or tensor", param="kind", code="invalid_value")
    canaries = bodies.required(body, "canaries")
    if not isinstance(canaries, list):
        raise bad_request("'canaries' must be an array", param="canaries", code="invalid_type")
    m = rpb.CatalogModel(name=name, kind=KINDS[kind], tokenizer=bodies.string(body, "tokenizer") or "",
                         weights_digest=bodies.string(body, "weights_digest") or "",
                         context_length=bodies.integer(body, "context_length", lo=0, hi=UINT32_MAX) or 0,
                         canaries=[_canary(c, i) for i, c in enumerate(canaries)])
    if body.get("max_price") is not None:
        price = _object(body["max_price"], "max_price")
        bodies.only(price, set(PRICES))
        for field in PRICES:
            setattr(m.max_price, field, bodies.integer(price, field, lo=0, hi=PRICE_MAX) or 0)
    return m


def _price(p: rpb.Price) -> dict:
    return {f: getattr(p, f) for f in PRICES}


def catalog_model(m: rpb.CatalogModel) -> dict:
    return {"object": "catalog_model", "name": m.name, "kind": views.MODEL_KINDS.get(m.kind, "unknown"),
            "tokenizer": m.tokenizer, "weights_digest": m.weights_digest, "context_length": m.context_length,
            "canaries": [{"prompt": c.prompt, "max_tokens": c.max_tokens, "expected_text": c.expected_text,
                          "kserve_request_json": c.kserve_request_json,
                          "kserve_expected_json": c.kserve_expected_json, "tolerance": c.tolerance}
                         for c in m.canaries],
            "max_price": _price(m.max_price), "updated_at": views.when(m.updated_at, m.HasField("updated_at")),
            "updated_by": m.updated_by}


def provider(p: rpb.Provider) -> dict:
    return {"object": "provider", "provider_id": views.uid(p.provider_id), "name": p.name,
            "account_id": views.uid(p.ledger_account_id), "trusted": p.trusted, "suspended": p.suspended,
            "suspended_reason": p.suspended_reason, "under_review": p.under_review,
            "created_at": views.when(p.created_at, p.HasField("created_at"))}


def node(n: rpb.Node) -> dict:
    """A node as views.node shows it, with its trust: whether its provider is
    trusted, its reputation and the reasons for it, each model's tokenizer."""
    out = views.node(n)
    for shown, m in zip(out["models"], n.models, strict=True):
        shown["tokenizer"] = m.tokenizer
    r = n.reputation
    out["trusted"] = n.trusted
    out["reputation"] = {"score": r.score, "sample_rate": r.sample_rate, "checks_passed": r.checks_passed,
                         "checks_failed": r.checks_failed, "count_disagreements": r.count_disagreements,
                         "reasons": list(r.reasons)}
    return out


def action(a: rpb.OperatorAction) -> dict:
    return {"object": "operator_action", "seq": a.seq, "at": views.when(a.at, a.HasField("at")), "actor": a.actor,
            "action": a.action, "target": a.target, "reason": a.reason}
