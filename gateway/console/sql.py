"""The console's reads of the gateway's own tables (schema ``gateway``): an
account's API keys (never a digest or a secret) and the accounts created
through the admin API, each page bounded by the caller's limit."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from idlegrid.gateway.store import Db


@dataclass(frozen=True, slots=True)
class KeyRow:
    key_id: str
    scope: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class AccountListRow:
    account_id: bytes
    kind: str
    name: str
    provider_id: bytes | None
    created_at: dt.datetime


async def keys_of(db: Db, account_id: bytes, *, limit: int) -> list[KeyRow]:
    """The account's keys, live ones first, newest first."""
    rows = await db.fetch(
        """SELECT key_id, scope, created_at, expires_at, revoked_at FROM gateway.api_keys
            WHERE account_id = $1 ORDER BY revoked_at IS NOT NULL, created_at DESC LIMIT $2""",
        uuid.UUID(bytes=account_id), limit)
    return [KeyRow(r["key_id"], r["scope"], r["created_at"], r["expires_at"], r["revoked_at"]) for r in rows]


async def key_owner(db: Db, key_id: str) -> bytes | None:
    """The account a live key belongs to (None: no such live key, or an admin key)."""
    owner = await db.fetchval(
        "SELECT account_id FROM gateway.api_keys WHERE key_id = $1 AND revoked_at IS NULL", key_id)
    return owner.bytes if owner is not None else None


async def accounts(db: Db, *, kind: str | None, after: dt.datetime | None, limit: int) -> list[AccountListRow]:
    """Accounts created through the gateway, newest first, older than ``after``."""
    rows = await db.fetch(
        """SELECT account_id, kind, name, provider_id, created_at FROM gateway.accounts
            WHERE ($1::text IS NULL OR kind = $1) AND ($2::timestamptz IS NULL OR created_at < $2)
            ORDER BY created_at DESC LIMIT $3""", kind, after, limit)
    return [AccountListRow(r["account_id"].bytes, r["kind"], r["name"],
                           r["provider_id"].bytes if r["provider_id"] else None, r["created_at"]) for r in rows]


async def live_keys(db: Db, account_id: bytes) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM gateway.api_keys WHERE account_id = $1 AND revoked_at IS NULL",
        uuid.UUID(bytes=account_id))
