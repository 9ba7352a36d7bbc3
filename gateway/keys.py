"""API keys: their format, creation and revocation.

A key names itself and carries 256 random bits: ``ig_<key id>_<secret>``
(key id: 32 hex digits; secret: 43 URL-safe characters). The database keeps
only the SHA-256 of the secret and the key's scope and owner, so a stolen
table reveals no usable key, and a lookup is by primary key, never a scan.
The full key is returned once, when created, and is never logged.
A key may expire; an admin key always does (IDLEGRID_GATEWAY_ADMIN_KEY_TTL_S,
30 days by default): an expired key is answered 401 like a revoked one.

| scope | may call | bound to |
|---|---|---|
| consumer | inference (/v1 and /v2), /v1/account* | a consumer ledger account |
| provider | /v1/provider/* | a provider ledger account and its registry provider |
| admin | /v1/admin/*; any account's /v1/account* and /v1/provider/* (``?account_id=``) | nothing |
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from typing import NamedTuple

from idlegrid.common.errors import InvalidArgument
from idlegrid.gateway import store
from idlegrid.gateway.store import Db

PREFIX = "ig"
SCOPES = ("consumer", "provider", "admin")
KEY_CHARS_MAX = 128
_SHAPE = re.compile(r"^ig_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$")
_KEY_ID = re.compile(r"[0-9a-f]{32}")
ADMIN_KEY_TTL_S_DEFAULT = 30 * 86_400
EXPIRES_IN_S_MAX = 10 * 365 * 86_400


class NewKey(NamedTuple):
    key_id: str
    key: str  # shown once
    expires_at: dt.datetime | None


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    if len(key) > KEY_CHARS_MAX:
        return None
    m = _SHAPE.match(key)
    return (m.group(1), m.group(2)) if m else None


async def create_key(db: Db, *, scope: str, account_id: bytes | None = None,
                     provider_id: bytes | None = None, rate_per_s: int | None = None,
                     burst: int | None = None, expires_in_s: int | None = None) -> tuple[str, str]:
    """Creates a key and returns ``(key_id, key)``; the key is shown only
    here (see :func:`issue`)."""
    made = await issue(db, scope=scope, account_id=account_id, provider_id=provider_id, rate_per_s=rate_per_s,
                       burst=burst, expires_in_s=expires_in_s)
    return made.key_id, made.key


async def issue(db: Db, *, scope: str, account_id: bytes | None = None, provider_id: bytes | None = None,
                rate_per_s: int | None = None, burst: int | None = None,
                expires_in_s: int | None = None) -> NewKey:
    """Creates a key: its id, the key (shown only here) and when it expires.

    A consumer key needs the consumer's ledger ``account_id``; a provider key
    the provider's ledger account and its registry ``provider_id``; an admin
    key neither, and it expires after ``expires_in_s`` (default 30 days;
    other keys: never, unless given). The caller checks that the account
    exists (the admin route does)."""
    if scope not in SCOPES:
        raise InvalidArgument(f"scope must be one of {', '.join(SCOPES)}")
    if scope != "admin" and not account_id:
        raise InvalidArgument(f"a {scope} key needs an account_id")
    if scope == "provider" and not provider_id:
        raise InvalidArgument("a provider key needs a provider_id")
    for name, value in (("account_id", account_id), ("provider_id", provider_id)):
        if value is not None and (len(value) != 16 or value == bytes(16)):
            raise InvalidArgument(f"{name} must be 16 non-zero bytes")
    if scope == "admin" and expires_in_s is None:
        expires_in_s = ADMIN_KEY_TTL_S_DEFAULT
    if expires_in_s is not None and not 1 <= expires_in_s <= EXPIRES_IN_S_MAX:
        raise InvalidArgument(f"expires_in_s must be in [1, {EXPIRES_IN_S_MAX}]")
    key_id, secret = secrets.token_hex(16), secrets.token_urlsafe(32)
    expires_at = await store.insert_key(
        db, key_id=key_id, secret_sha256=digest(secret), scope=scope, account_id=account_id,
        provider_id=provider_id if scope == "provider" else None, rate_per_s=rate_per_s, burst=burst,
        expires_in_s=expires_in_s)
    return NewKey(key_id, f"{PREFIX}_{key_id}_{secret}", expires_at)


async def revoke_key(db: Db, key_id: str) -> bool:
    """Revokes a key for good; False when there is no such live key. Every
    replica drops it from its cache when this commits (a trigger notifies)."""
    if not _KEY_ID.fullmatch(key_id):
        return False
    return await store.revoke_key(db, key_id)

