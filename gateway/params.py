"""Query parameters shared by the account and provider routes: account ids,
time windows, buckets, page sizes and cursors, each checked (400 naming it)."""

from __future__ import annotations

import datetime as dt
import uuid

from google.protobuf.timestamp_pb2 import Timestamp
from starlette.requests import Request

from idlegrid.common.paging import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX
from idlegrid.gateway.errors import ApiError, bad_request
from idlegrid.gateway.store import KeyRecord

BUCKET_S_MIN, BUCKET_S_MAX, BUCKET_S_DEFAULT = 60, 2_592_000, 3600
BUCKET_NAMES = {"minute": 60, "hour": 3600, "day": 86_400, "week": 604_800}
CURSOR_CHARS_MAX = 512


def account_uuid(value: str, param: str = "account_id") -> bytes:
    try:
        b = uuid.UUID(value).bytes
    except (ValueError, AttributeError):
        raise bad_request(f"'{param}' must be a UUID", param=param, code="invalid_account_id") from None
    if b == bytes(16):
        raise bad_request(f"'{param}' must not be all zeros", param=param, code="invalid_account_id")
    return b


def own_account(request: Request, rec: KeyRecord) -> bytes:
    """The account a read is about: the key's own, or for an admin key the
    one named by ``?account_id=``. Naming another account is 403."""
    named = request.query_params.get("account_id")
    if rec.scope == "admin":
        if not named:
            raise bad_request("an admin key names the account: add ?account_id=<uuid>", param="account_id")
        return account_uuid(named)
    assert rec.account_id is not None
    if named is not None and account_uuid(named) != rec.account_id:
        raise ApiError(403, "this key can only read its own account", code="wrong_account")
    return rec.account_id


def _time(request: Request, name: str) -> Timestamp | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        when = dt.datetime.fromtimestamp(float(raw), tz=dt.UTC) if raw.replace(".", "", 1).isdigit() \
            else dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise bad_request(f"'{name}' must be an RFC 3339 time or unix seconds", param=name) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    ts = Timestamp()
    try:
        ts.FromDatetime(when)
    except (ValueError, OverflowError):
        raise bad_request(f"'{name}' is out of range", param=name) from None
    return ts


def window(request: Request) -> tuple[Timestamp | None, Timestamp | None]:
    since, until = _time(request, "since"), _time(request, "until")
    if since is not None and until is not None and until.ToNanoseconds() <= since.ToNanoseconds():
        raise bad_request("'until' must be after 'since'", param="until")
    return since, until


def bucket_s(request: Request) -> int:
    raw = request.query_params.get("bucket")
    if raw is None or raw == "":
        return BUCKET_S_DEFAULT
    if raw in BUCKET_NAMES:
        return BUCKET_NAMES[raw]
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not BUCKET_S_MIN <= value <= BUCKET_S_MAX:
        raise bad_request(f"'bucket' must be minute, hour, day, week or seconds in [{BUCKET_S_MIN}, "
                          f"{BUCKET_S_MAX}]", param="bucket")
    return value


def limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return PAGE_SIZE_DEFAULT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= PAGE_SIZE_MAX:
        raise bad_request(f"'limit' must be an integer in [1, {PAGE_SIZE_MAX}]", param="limit")
    return value


def cursor(request: Request) -> str:
    raw = request.query_params.get("cursor") or ""
    if len(raw) > CURSOR_CHARS_MAX:
        raise bad_request("'cursor' is malformed", param="cursor")
    return raw


SEQ_MAX = (1 << 63) - 1  # a bigint sequence number


def seq_cursor(request: Request) -> int | None:
    """A cursor that is a sequence number: ASCII digits within a bigint
    (``str.isdigit`` would let "²" through to ``int``)."""
    raw = cursor(request)
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > SEQ_MAX:
        raise bad_request("'cursor' is malformed", param="cursor")
    return int(raw)


def choice(request: Request, name: str, choices: tuple[str, ...], default: str) -> str:
    raw = request.query_params.get(name) or default
    if raw not in choices:
        raise bad_request(f"'{name}' must be one of {', '.join(choices)}", param=name)
    return raw
