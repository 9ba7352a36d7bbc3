"""Request bodies: read with a size limit (413 past it, whether announced by
Content-Length or streamed), parsed as JSON objects, and typed field access
that answers 400 naming the field."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request

from idlegrid.gateway.errors import ApiError, bad_request, too_large


async def read(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            announced = int(length)
        except ValueError:
            raise bad_request("Content-Length is not a number") from None
        if announced > limit:
            raise too_large(f"the request body is {announced} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"the request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_object(raw: bytes, *, what: str = "the request body") -> dict:
    if not raw:
        raise bad_request(f"{what} is empty; send a JSON object")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise bad_request(f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise bad_request(f"{what} must be a JSON object")
    # A lone surrogate (written as a \uD800-\uDFFF escape) parses into a str
    # that no UTF-8 encoder accepts; refuse it here rather than fail later.
    if b"\\ud" in raw or b"\\uD" in raw:
        _no_lone_surrogates(value)
    return value


def _no_lone_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise bad_request("the request contains an unpaired UTF-16 surrogate") from None
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


async def read_json(request: Request, limit: int) -> dict:
    return parse_object(await read(request, limit))


def only(body: dict, allowed: frozenset[str] | set[str]) -> None:
    """400 for fields the route does not know (as OpenAI does)."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise bad_request(f"unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                          code="unknown_parameter")


def required(body: dict, name: str) -> Any:
    if body.get(name) is None:
        raise bad_request(f"'{name}' is required", param=name, code="missing_required_parameter")
    return body[name]


def string(body: dict, name: str, *, required_: bool = False, max_len: int = 1 << 20) -> str | None:
    value = required(body, name) if required_ else body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"'{name}' must be a string", param=name, code="invalid_type")
    if len(value) > max_len:
        raise bad_request(f"'{name}' is longer than {max_len} characters", param=name)
    return value


def integer(body: dict, name: str, *, lo: int, hi: int, required_: bool = False) -> int | None:
    value = required(body, name) if required_ else body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer", param=name, code="invalid_type")
    if not lo <= value <= hi:
        raise bad_request(f"'{name}' must be in [{lo}, {hi}], got {value}", param=name, code="invalid_value")
    return value


def number(body: dict, name: str, *, lo: float, hi: float, lo_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_request(f"'{name}' must be a number", param=name, code="invalid_type")
    if not (lo < value if lo_open else lo <= value) or value > hi:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise bad_request(f"'{name}' must be in {interval}, got {value}", param=name, code="invalid_value")
    return float(value)


def boolean(body: dict, name: str) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be true or false", param=name, code="invalid_type")
    return value


def unsupported(body: dict, name: str, *, allowed: tuple = (None,), why: str = "") -> None:
    """400 when an OpenAI option the gateway does not offer is set to anything
    but a harmless default."""
    if name in body and body[name] not in allowed:
        raise ApiError(400, f"'{name}' is not supported{': ' + why if why else ''}", param=name,
                       code="unsupported_parameter")
