"""The schemas of the OpenAPI document (openapi.py): what each route answers
and what each body may hold, as exact as the code that builds and checks
them (views.py, openai_shapes.py, catalog.py, bodies.py, params.py), so that
a schema fuzzer (tests/fuzz) can hold every answer to it."""

from __future__ import annotations

from idlegrid.common.money import AMOUNT_MAX
from idlegrid.common.paging import PAGE_SIZE_MAX
from idlegrid.gateway.audit import ACTIONS as AUDIT_ACTIONS
from idlegrid.gateway.keys import EXPIRES_IN_S_MAX
from idlegrid.gateway.params import CURSOR_CHARS_MAX
from idlegrid.gateway.provider_prefs import HEADER_BYTES_MAX, ID_PATTERN, IDS_MAX

STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
OBJ = {"type": "object"}
NULL_STR = {"type": ["string", "null"]}
NULL_INT = {"type": ["integer", "null"]}
UUID = {"type": "string", "format": "uuid"}
NULL_UUID = {"type": ["string", "null"], "format": "uuid"}


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(props: dict, *, optional: tuple[str, ...] = (), closed: bool = False) -> dict:
    """An object whose every property but ``optional`` is required."""
    out: dict = {"type": "object", "required": [k for k in props if k not in optional], "properties": props}
    if closed:
        out["additionalProperties"] = False
    return out


def page(item: dict, **extra: dict) -> dict:
    return obj({"object": {"const": "list"}, **extra, "data": {"type": "array", "items": item},
                "next_cursor": NULL_STR})


# ------------------------------------------------------------ parameters
ACCOUNT_ID_Q = {"type": "string", "format": "uuid", "description": "admin keys: the account to read; others: "
                "their own (another is 403)"}
LIMIT_Q = {"type": "integer", "minimum": 1, "maximum": PAGE_SIZE_MAX}
CURSOR_Q = {"type": "string", "maxLength": CURSOR_CHARS_MAX}

# ---------------------------------------------------------------- bodies
NAME = {"type": "string", "pattern": r"^[A-Za-z0-9_.@+-]{1,100}$"}
CREATE_ACCOUNT = obj({"kind": {"enum": ["consumer", "provider"]}, "name": NAME}, closed=True)
# Optional fields: null is the same as leaving the field out (bodies.py).
CREATE_KEY = obj({
    "scope": {"enum": ["consumer", "provider", "admin"]},
    "account_id": {**NULL_UUID, "description": "the consumer or provider account (not for admin keys)"},
    "rate_per_s": {"type": ["integer", "null"], "minimum": 0, "maximum": 10_000_000},
    "burst": {"type": ["integer", "null"], "minimum": 1, "maximum": 100_000_000},
    "expires_in_s": {"type": ["integer", "null"], "minimum": 1, "maximum": EXPIRES_IN_S_MAX,
                     "description": "life of the key; admin keys: default and at most "
                                    "IDLEGRID_GATEWAY_ADMIN_KEY_TTL_S"}},
    optional=("account_id", "rate_per_s", "burst", "expires_in_s"), closed=True)
MONEY = obj({"amount_micros": {"type": "integer", "minimum": 1, "maximum": AMOUNT_MAX},
             "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 128,
                                 "pattern": "^[^\\x00-\\x1f\\x7f]+$", "description": "no control characters"}},
            closed=True)
_IDS = {"type": ["array", "null"], "maxItems": IDS_MAX, "items": {"type": "string", "pattern": ID_PATTERN},
        "description": "node or provider ids (32 hex digits or a UUID); a provider id names all its nodes"}
_PRICE = {"type": ["integer", "null"], "minimum": 0, "maximum": AMOUNT_MAX}
PROVIDER = {
    "type": ["object", "null"], "additionalProperties": False,
    "description": "OpenRouter's provider preferences. Prices are integer micro-credits: prompt and completion "
                   "per million tokens, request per request (the unit of /v1/models' pricing). A node priced "
                   "above max_price is never used and never charged; when no ready node is within it: 503, "
                   "code no_node_within_max_price, nothing charged.",
    "properties": {
        "sort": {"enum": ["price", "latency", "throughput", None],
                 "description": "price: cheapest first; latency: lowest recent latency; throughput: most spare "
                                "capacity. Unset: the default score, load-balanced"},
        "max_price": {"type": ["object", "null"], "additionalProperties": False, "properties": {
            "prompt": {**_PRICE, "description": "micro-credits per million prompt tokens"},
            "completion": {**_PRICE, "description": "micro-credits per million completion tokens"},
            "request": {**_PRICE, "description": "micro-credits per request"}}},
        "order": {**_IDS, "description": "nodes or providers tried first, in this order"},
        "only": {**_IDS, "description": "no other node is used"},
        "ignore": {**_IDS, "description": "never used"},
        "allow_fallbacks": {"type": ["boolean", "null"],
                            "description": "default true; false: only the order nodes are tried (without order, "
                                           "the only nodes; without either, the first choice alone)"}}}
PROVIDER_HEADER = {"type": "string", "maxLength": HEADER_BYTES_MAX,
                   "description": "the provider object (see the chat completion body) as JSON"}
_SAMPLING = {"max_tokens": {"type": "integer", "minimum": 1}, "temperature": {"type": "number", "minimum": 0},
             "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "stop": {},
             "seed": INT, "n": {"const": 1}, "stream": BOOL,
             "stream_options": {"type": "object", "properties": {"include_usage": BOOL}}, "provider": PROVIDER}
CHAT = {"type": "object", "required": ["model", "messages"], "properties": {
    "model": STR, "messages": {"type": "array", "minItems": 1, "items": obj(
        {"role": {"enum": ["system", "developer", "user", "assistant"]}, "name": STR,
         "content": {"anyOf": [STR, {"type": "array", "items": obj({"type": {"const": "text"}, "text": STR})}]}},
        optional=("name",))},
    "max_completion_tokens": {"type": "integer", "minimum": 1}, **_SAMPLING}}
COMPLETION = {"type": "object", "required": ["model", "prompt"], "properties": {"model": STR, "prompt": STR,
                                                                               **_SAMPLING}}
EMBEDDINGS = obj({"model": STR, "input": {}, "encoding_format": STR, "dimensions": INT, "user": STR},
                 optional=("encoding_format", "dimensions", "user"), closed=True)
KSERVE_INFER = {"type": "object", "required": ["inputs"], "properties": {
    "id": STR, "parameters": OBJ, "inputs": {"type": "array", "minItems": 1, "items": obj(
        {"name": {"type": "string", "minLength": 1}, "datatype": STR, "shape": {"type": "array", "items": INT},
         "data": {}}, optional=("data",))},
    "outputs": {"type": "array", "items": obj({"name": {"type": "string", "minLength": 1}, "parameters": OBJ},
                                              optional=("parameters",))}}}

# ------------------------------------------------------------- answers
_ACCOUNT = obj({"object": {"const": "account"}, "account_id": NULL_UUID,
                "kind": {"enum": ["consumer", "provider", "escrow", "platform", "external", "unknown"]},
                "name": NULL_STR, "available_micros": INT, "held_micros": INT, "spent_micros": INT,
                "credited_micros": INT, "created_at": NULL_STR})
_TRANSFER = obj({"id": NULL_UUID, "seq": INT, "created_at": NULL_STR, "type": STR,
                 "direction": {"enum": ["debit", "credit"]}, "amount_micros": INT, "pending": BOOL,
                 "counterparty_account_id": NULL_UUID, "job_id": NULL_UUID,
                 "lease_id": NULL_UUID})
_LINE_ITEM = obj({"job_id": NULL_UUID, "model": STR, "node_id": NULL_STR,
                  "outcome": {"enum": ["completed", "partial", "failed", "unknown"]},
                  "settlement": {"enum": ["pending", "settled", "released", "expired", "rejected", "unknown"]},
                  "prompt_tokens": INT, "completion_tokens": INT, "requests": INT, "cost_micros": INT,
                  "duration_ms": INT, "started_at": NULL_STR, "finished_at": NULL_STR,
                  "fee_micros": INT, "provider_micros": INT, "settled_at": NULL_STR},
                 optional=("fee_micros", "provider_micros", "settled_at"))
_JOBS = obj({"data": {"type": "array", "items": _LINE_ITEM}, "next_cursor": NULL_STR})
_BUCKET = obj({"start": NULL_STR, "key": NULL_STR, "jobs": INT, "prompt_tokens": INT, "completion_tokens": INT,
               "requests": INT, "cost_micros": INT, "settled_cost_micros": INT})
_USAGE = obj({"object": {"const": "usage"}, "account_id": NULL_UUID, "bucket_s": INT,
              "group_by": {"enum": ["none", "model", "node"]}, "buckets": {"type": "array", "items": _BUCKET},
              "jobs": _JOBS})
_SUMS = {"jobs": INT, "prompt_tokens": INT, "completion_tokens": INT, "requests": INT, "cost_micros": INT,
         "earned_micros": INT, "pending_micros": INT}
_HELD_SUMS = {"held_micros": INT, "released_micros": INT, "voided_micros": INT}
_EARNING_JOB = {**_LINE_ITEM, "properties": {
    **_LINE_ITEM["properties"], "earning": {"enum": ["held", "released", "voided", "posted", None]},
    "earning_release_at": NULL_STR, "earning_resolved_at": NULL_STR, "earning_note": NULL_STR,
    "check_result": {"enum": ["unchecked", "passed", "failed"]}, "check_detail": NULL_STR,
    "checked_at": NULL_STR}}
_EARNINGS = obj({"object": {"const": "provider.earnings"}, "account_id": NULL_UUID, "earned_micros": INT,
                 "paid_out_micros": INT, "balance_micros": INT, "available_micros": INT, **_HELD_SUMS,
                 "next_release_at": NULL_STR, "pending_micros": INT, "fee_bps": INT,
                 "by_node": {"type": "array", "items": obj({"node_id": NULL_STR, **_SUMS, **_HELD_SUMS})},
                 "by_model": {"type": "array", "items": obj({"model": STR, **_SUMS})},
                 "jobs": obj({"data": {"type": "array", "items": _EARNING_JOB}, "next_cursor": NULL_STR})})
_NODE = {"type": "object", "required": ["node_id", "state", "models"], "properties": {
    "node_id": STR, "endpoint": STR, "state": STR, "state_reason": STR, "state_detail": STR, "region": STR,
    "labels": {"type": "object", "additionalProperties": STR}, "hardware": OBJ,
    "models": {"type": "array", "items": OBJ}, "load": {"type": ["object", "null"]},
    "registered_at": NULL_STR, "state_changed_at": NULL_STR, "agent_version": STR,
    "trusted": BOOL, "reputation": OBJ}}
_RANGE = obj({"min": INT, "max": INT})
_MODEL = {"type": "object", "required": ["id", "object", "created", "owned_by", "kind", "nodes", "pricing"],
          "properties": {"id": STR, "object": {"const": "model"}, "created": INT, "owned_by": STR,
                         "kind": {"enum": ["llm", "tensor", "unknown"]}, "nodes": INT, "context_length": INT,
                         "pricing": {"type": "object", "required": ["unit"], "properties": {
                             "unit": {"const": "micro-credits"}, "input_per_million_tokens": _RANGE,
                             "output_per_million_tokens": _RANGE, "per_request": _RANGE}}}}
_USAGE_TOKENS = obj({"prompt_tokens": INT, "completion_tokens": INT, "total_tokens": INT, "cost_micros": INT})
_FINISH = {"type": "string"}
_CHAT_COMPLETION = obj({"id": STR, "object": {"const": "chat.completion"}, "created": INT, "model": STR,
                        "system_fingerprint": NULL_STR, "usage": _USAGE_TOKENS, "choices": {
                            "type": "array", "items": obj({"index": INT, "logprobs": {"type": "null"},
                                                           "finish_reason": _FINISH, "message": obj({
                                                               "role": {"const": "assistant"}, "content": STR,
                                                               "refusal": {"type": "null"}})})}})
_TEXT_COMPLETION = obj({"id": STR, "object": {"const": "text_completion"}, "created": INT, "model": STR,
                        "system_fingerprint": NULL_STR, "usage": _USAGE_TOKENS, "choices": {
                            "type": "array", "items": obj({"index": INT, "text": STR, "logprobs": {"type": "null"},
                                                           "finish_reason": _FINISH})}})
_TENSOR_META = obj({"name": STR, "datatype": STR, "shape": {"type": "array", "items": INT}})
_READY = obj({"status": {"enum": ["ready", "not_ready"]}, "checks": {"type": "object",
                                                                     "additionalProperties": STR}})

COMPONENTS = {
    "Error": obj({"error": obj({"message": STR, "type": STR, "param": NULL_STR, "code": NULL_STR})}),
    "KServeError": obj({"error": STR}),
    "Account": _ACCOUNT,
    "TransactionPage": page(_TRANSFER, account_id=NULL_UUID),
    "Usage": _USAGE,
    "Earnings": _EARNINGS,
    "NodePage": page(_NODE, provider_id=NULL_UUID),
    "Model": _MODEL,
    "ModelList": obj({"object": {"const": "list"}, "data": {"type": "array", "items": _MODEL}}),
    "ChatCompletion": _CHAT_COMPLETION,
    "TextCompletion": _TEXT_COMPLETION,
    "CreatedAccount": obj({"object": {"const": "account"}, "account_id": UUID,
                           "kind": {"enum": ["consumer", "provider"]}, "name": STR, "provider_id": NULL_UUID,
                           "provider_token": {**NULL_STR, "description": "a provider's registry token, shown "
                                                                         "once"}}),
    "CreatedKey": obj({"object": {"const": "api_key"}, "key_id": STR, "key": {**STR, "description": "shown once"},
                       "scope": {"enum": ["consumer", "provider", "admin"]}, "account_id": NULL_UUID,
                       "expires_at": NULL_STR}),
    "RevokedKey": obj({"object": {"const": "api_key"}, "key_id": STR, "revoked": {"const": True}}),
    "MoneyOperation": obj({"object": {"const": "operation"}, "status": {"enum": ["applied", "already_applied"]},
                           "amount_micros": INT, "transfer_ids": {"type": "array", "items": NULL_UUID},
                           "account": _ACCOUNT}),
    "AuditPage": page(obj({"seq": INT, "at": STR, "actor": {**STR, "description": "the admin key id, or cli"},
                           "action": {"enum": list(AUDIT_ACTIONS)},
                           "result": {"enum": ["started", "ok", "already_applied", "refused", "failed"]},
                           "account_id": NULL_STR, "key_id": NULL_STR, "amount_micros": NULL_INT,
                           "idempotency_key": NULL_STR, "detail": STR})),
    "ServerMetadata": obj({"name": STR, "version": STR, "extensions": {"type": "array", "items": STR}}),
    "ModelMetadata": obj({"name": STR, "versions": {"type": "array", "items": STR}, "platform": STR,
                          "inputs": {"type": "array", "items": _TENSOR_META},
                          "outputs": {"type": "array", "items": _TENSOR_META}}),
    "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": STR, "model_version": STR, "id": STR, "parameters": OBJ,
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"]}}}},
    "Live": obj({"status": {"const": "ok"}}),
    "Ready": _READY,
}
