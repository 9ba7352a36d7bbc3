"""All of the gateway's SQL, against its schema ``gateway`` (see
migrations/): API keys, the accounts created through the admin API, the
shared rate-limit allowance, the key-change channel and the health probe.

Each function takes the pool (or a connection) to run on, and speaks in
plain values: ids are 16-byte ``bytes`` here and ``uuid`` only in the
database. The rules (who may have which key, when a name is free, how much
of an allowance to lease) live in the modules that call these.

| table / function | written by | read by |
|---|---|---|
| gateway.accounts | onboarding.create_account (last step: the commit point) | onboarding, admin and provider routes |
| gateway.api_keys | keys.create_key, keys.revoke_key | auth (every request, cached) |
| gateway.rate_take() over gateway.rate_limits | ratelimit (a lease of a few requests at once) | |
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

# The trigger gateway.api_keys_notify (migrations/001_gateway.sql) notifies
# this channel with the key id of every key that changes.
KEYS_CHANNEL = "idlegrid_gateway_keys"
LISTENER_APP_NAME = "idlegrid-gateway-keys"

Db = asyncpg.Pool | asyncpg.Connection


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


@dataclass(frozen=True, slots=True)
class AccountRow:
    """A row of gateway.accounts: an account created through the gateway."""

    account_id: bytes
    kind: str
    name: str
    provider_id: bytes | None


def _uuid(b: bytes | None) -> uuid.UUID | None:
    return uuid.UUID(bytes=b) if b else None


def _bytes(u: uuid.UUID | None) -> bytes | None:
    return u.bytes if u is not None else None


# -- health -----------------------------------------------------------------

async def ping(db: Db, *, timeout_s: float) -> None:
    """Raises unless the database answers within ``timeout_s``."""
    await db.fetchval("SELECT 1", timeout=timeout_s)


# -- accounts ---------------------------------------------------------------

async def account_exists(db: Db, *, kind: str, name: str) -> bool:
    return bool(await db.fetchval("SELECT 1 FROM gateway.accounts WHERE kind = $1 AND name = $2", kind, name))


async def insert_account(db: Db, row: AccountRow) -> bool:
    """Writes the row; False when an account with its id or (kind, name) exists."""
    inserted = await db.fetchval(
        """INSERT INTO gateway.accounts (account_id, kind, name, provider_id) VALUES ($1, $2, $3, $4)
           ON CONFLICT DO NOTHING RETURNING 1""",
        _uuid(row.account_id), row.kind, row.name, _uuid(row.provider_id))
    return bool(inserted)


async def account_by_id(db: Db, account_id: bytes) -> AccountRow | None:
    row = await db.fetchrow("SELECT account_id, kind, name, provider_id FROM gateway.accounts WHERE account_id = $1",
                            _uuid(account_id))
    return _account(row)


async def account_by_name(db: Db, *, kind: str, name: str) -> AccountRow | None:
    row = await db.fetchrow(
        "SELECT account_id, kind, name, provider_id FROM gateway.accounts WHERE kind = $1 AND name = $2", kind, name)
    return _account(row)


def _account(row) -> AccountRow | None:
    if row is None:
        return None
    return AccountRow(account_id=row["account_id"].bytes, kind=row["kind"], name=row["name"],
                      provider_id=_bytes(row["provider_id"]))


# -- API keys ---------------------------------------------------------------

async def insert_key(db: Db, *, key_id: str, secret_sha256: bytes, scope: str, account_id: bytes | None,
                     provider_id: bytes | None, rate_per_s: int | None, burst: int | None) -> None:
    await db.execute(
        """INSERT INTO gateway.api_keys (key_id, secret_sha256, scope, account_id, provider_id, rate_per_s, burst)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        key_id, secret_sha256, scope, _uuid(account_id), _uuid(provider_id), rate_per_s, burst)


async def revoke_key(db: Db, key_id: str) -> bool:
    """Marks a live key revoked; False when there is no such live key."""
    row = await db.fetchrow(
        "UPDATE gateway.api_keys SET revoked_at = clock_timestamp() WHERE key_id = $1 AND revoked_at IS NULL "
        "RETURNING key_id", key_id)
    return row is not None


async def load_key(db: Db, key_id: str) -> KeyRecord | None:
    """The live (not revoked) key with this id, or None."""
    row = await db.fetchrow(
        """SELECT key_id, secret_sha256, scope, account_id, provider_id, rate_per_s, burst
             FROM gateway.api_keys WHERE key_id = $1 AND revoked_at IS NULL""", key_id)
    if row is None:
        return None
    return KeyRecord(
        key_id=row["key_id"], secret_sha256=bytes(row["secret_sha256"]), scope=row["scope"],
        account_id=_bytes(row["account_id"]), provider_id=_bytes(row["provider_id"]),
        rate_per_s=row["rate_per_s"], burst=row["burst"])


async def listen_for_key_changes(database_url: str, *, on_change: Callable[[str], None],
                                 on_lost: Callable[[], None]) -> asyncpg.Connection:
    """A connection of its own that calls ``on_change(key_id)`` whenever a
    key changes (on commit, from any client), and ``on_lost()`` if the
    connection ends. The caller keeps it alive (``ping``) and closes it."""
    conn = await asyncpg.connect(database_url, server_settings={"application_name": LISTENER_APP_NAME})
    try:
        conn.add_termination_listener(lambda _conn: on_lost())
        await conn.add_listener(KEYS_CHANNEL, lambda _conn, _pid, _channel, payload: on_change(payload))
    except BaseException:
        conn.terminate()
        raise
    return conn


# -- rate limits ------------------------------------------------------------

async def rate_take(db: Db, *, key_id: str, interval_s: float, burst: int, want: int) -> tuple[int, float]:
    """Takes up to ``want`` requests of the key's shared allowance (GCRA):
    ``(granted, 0)`` when at least one is granted, else ``(0, seconds until
    the next one would be)``."""
    row = await db.fetchrow("SELECT granted, wait_s FROM gateway.rate_take($1, $2, $3, $4)",
                            key_id, interval_s, burst, want)
    return row["granted"], row["wait_s"]
