"""OpenRouter's ``provider`` request object, checked and turned into the
scheduler's ProviderPreferences: in a chat or completion body, and on the
KServe path as the JSON of the ``X-Idlegrid-Provider`` header.

    {"sort": "price" | "latency" | "throughput",
     "max_price": {"prompt": int, "completion": int, "request": int},
     "order": [id, ...], "only": [id, ...], "ignore": [id, ...],
     "allow_fallbacks": bool}

Every field is optional (null = absent). Prices are integer micro-credits:
``prompt`` and ``completion`` per million tokens, ``request`` per request
(OpenRouter's are dollars; idlegrid's unit is the micro-credit, as in
/v1/models' pricing). An id is a node id or a provider id, as 32 hex digits
or a UUID. Anything else is a 400 naming the field.
"""

from __future__ import annotations

import re

from idlegrid.common.money import AMOUNT_MAX
from idlegrid.gateway import bodies
from idlegrid.gateway.errors import ApiError, bad_request
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

FIELDS = frozenset({"sort", "max_price", "order", "only", "ignore", "allow_fallbacks"})
PRICE_FIELDS = frozenset({"prompt", "completion", "request"})
SORTS = {"price": spb.PROVIDER_SORT_PRICE, "latency": spb.PROVIDER_SORT_LATENCY,
         "throughput": spb.PROVIDER_SORT_THROUGHPUT}
IDS_MAX = 64
PRICE_MAX = AMOUNT_MAX
HEADER = "x-idlegrid-provider"
HEADER_BYTES_MAX = 8192
ID_PATTERN = (r"^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
              r"[0-9a-fA-F]{12})$")
_ID = re.compile(ID_PATTERN)


def _ids(value, param: str) -> list[bytes]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request(f"'{param}' must be a list of node or provider ids", param=param, code="invalid_type")
    if len(value) > IDS_MAX:
        raise bad_request(f"'{param}' takes at most {IDS_MAX} ids", param=param)
    out = []
    for i, v in enumerate(value):
        if not isinstance(v, str) or not _ID.fullmatch(v):
            raise bad_request(f"'{param}[{i}]' must be a node or provider id (32 hex digits or a UUID)",
                              param=f"{param}[{i}]", code="invalid_id")
        out.append(bytes.fromhex(v.replace("-", "")))
    return out


def _max_price(value, into: spb.MaxPrice, param: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise bad_request(f"'{param}' must be an object", param=param, code="invalid_type")
    unknown = sorted(set(value) - PRICE_FIELDS)
    if unknown:
        raise ApiError(400, f"'{param}.{unknown[0]}' is not supported: max_price takes prompt, completion and "
                            "request", param=f"{param}.{unknown[0]}", code="unsupported_parameter")
    for name in sorted(PRICE_FIELDS):
        v = value.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad_request(f"'{param}.{name}' must be an integer number of micro-credits", param=f"{param}.{name}",
                              code="invalid_type")
        if not 0 <= v <= PRICE_MAX:
            raise bad_request(f"'{param}.{name}' must be in [0, {PRICE_MAX}], got {v}", param=f"{param}.{name}",
                              code="invalid_value")
        setattr(into, name, v)


def parse(value, *, param: str = "provider") -> spb.ProviderPreferences | None:
    """The preferences of a ``provider`` object, or None when it is absent."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(f"'{param}' must be an object", param=param, code="invalid_type")
    unknown = sorted(set(value) - FIELDS)
    if unknown:
        raise ApiError(400, f"'{param}.{unknown[0]}' is not supported", param=f"{param}.{unknown[0]}",
                       code="unsupported_parameter")
    p = spb.ProviderPreferences()
    sort = value.get("sort")
    if sort is not None:
        if not isinstance(sort, str) or sort not in SORTS:
            raise bad_request(f"'{param}.sort' must be one of {', '.join(SORTS)}", param=f"{param}.sort",
                              code="invalid_value")
        p.sort = SORTS[sort]
    _max_price(value.get("max_price"), p.max_price, f"{param}.max_price")
    for name in ("order", "only", "ignore"):
        getattr(p, name).extend(_ids(value.get(name), f"{param}.{name}"))
    fallbacks = value.get("allow_fallbacks")
    if fallbacks is not None:
        if not isinstance(fallbacks, bool):
            raise bad_request(f"'{param}.allow_fallbacks' must be true or false", param=f"{param}.allow_fallbacks",
                              code="invalid_type")
        p.allow_fallbacks = fallbacks
    return p


def from_header(raw: str | None) -> spb.ProviderPreferences | None:
    """The preferences in the ``X-Idlegrid-Provider`` header (a JSON object), if any."""
    if raw is None:
        return None
    if len(raw) > HEADER_BYTES_MAX:
        raise bad_request(f"the {HEADER} header is longer than {HEADER_BYTES_MAX} bytes", param=HEADER)
    return parse(bodies.parse_object(raw.encode(), what=f"the {HEADER} header"), param=HEADER)
