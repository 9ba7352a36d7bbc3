"""API keys: their format, creation and revocation.

A key names itself and carries 256 random bits: ``ig_<key id>_<secret>``
(key id: 32 hex digits; secret: 43 URL-safe characters). The database keeps
only the SHA-256 of the secret and the key's scope and owner, so a stolen
table reveals no usable key, and a lookup is by primary key, never a scan.
The full key is returned once, when created, and is never logged.

| scope | may call | bound to |
|---|---|---|
| consumer | inference (/v1 and /v2), /v1/account* | a consumer ledger account |
| provider | /v1/provider/* | a provider ledger account and its registry provider |
| admin | /v1/admin/*; any account's /v1/account* and /v1/provider/* (``?account_id=``) | nothing |
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass

import asyncpg

from idlegrid.common.errors import InvalidArgument

PREFIX = "ig"
SCOPES = ("consumer", "provider", "admin")
KEY_CHARS_MAX = 128
_SHAPE = re.compile(r"^ig_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored key, as the gateway needs it to authorize a request."""

    key_id: str
    secret_sha256: bytes
    scope: str
    account_id: bytes | None
    provider_id: bytes | None
    rate_per_s: int | None
    burst: int | None


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    if len(key) > KEY_CHARS_MAX:
        return None
    m = _SHAPE.match(key)
    return (m.group(1), m.group(2)) if m else None


def _uuid(b: bytes | None):
    return uuid.UUID(bytes=b) if b else None


async def create_key(pool: asyncpg.Pool, *, scope: str, account_id: bytes | None = None,
                     provider_id: bytes | None = None, rate_per_s: int | None = None,
                     burst: int | None = None) -> tuple[str, str]:
    """Creates a key and returns ``(key_id, key)``; the key is shown only here.

    A consumer key needs the consumer's ledger ``account_id``; a provider key
    the provider's ledger account and its registry ``provider_id``; an admin
    key neither. The caller checks that the account exists (the admin route
    does)."""
    if scope not in SCOPES:
        raise InvalidArgument(f"scope must be one of {', '.join(SCOPES)}")
    if scope != "admin" and not account_id:
        raise InvalidArgument(f"a {scope} key needs an account_id")
    if scope == "provider" and not provider_id:
        raise InvalidArgument("a provider key needs a provider_id")
    for name, value in (("account_id", account_id), ("provider_id", provider_id)):
        if value is not None and (len(value) != 16 or value == bytes(16)):
            raise InvalidArgument(f"{name} must be 16 non-zero bytes")
    key_id, secret = secrets.token_hex(16), secrets.token_urlsafe(32)
    await pool.execute(
        """INSERT INTO gateway.api_keys (key_id, secret_sha256, scope, account_id, provider_id, rate_per_s, burst)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        key_id, digest(secret), scope, _uuid(account_id), _uuid(provider_id) if scope == "provider" else None,
        rate_per_s, burst)
    return key_id, f"{PREFIX}_{key_id}_{secret}"


async def revoke_key(pool: asyncpg.Pool, key_id: str) -> bool:
    """Revokes a key for good; False when there is no such live key. Every
    replica drops it from its cache when this commits (a trigger notifies)."""
    if not re.fullmatch(r"[0-9a-f]{32}", key_id):
        return False
    row = await pool.fetchrow(
        "UPDATE gateway.api_keys SET revoked_at = clock_timestamp() WHERE key_id = $1 AND revoked_at IS NULL "
        "RETURNING key_id", key_id)
    return row is not None


async def load_key(conn, key_id: str) -> KeyRecord | None:
    """The live (not revoked) key with this id, or None."""
    row = await conn.fetchrow(
        """SELECT key_id, secret_sha256, scope, account_id, provider_id, rate_per_s, burst
             FROM gateway.api_keys WHERE key_id = $1 AND revoked_at IS NULL""", key_id)
    if row is None:
        return None
    return KeyRecord(
        key_id=row["key_id"], secret_sha256=bytes(row["secret_sha256"]), scope=row["scope"],
        account_id=row["account_id"].bytes if row["account_id"] else None,
        provider_id=row["provider_id"].bytes if row["provider_id"] else None,
        rate_per_s=row["rate_per_s"], burst=row["burst"])
