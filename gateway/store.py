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
| gateway.admin_money | admin_limits (reserve before the ledger, then its outcome) | admin_limits (the caps) |
| gateway.audit (append-only) | audit.record, in the transaction of the action it records | GET /v1/admin/audit |
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg

# The trigger gateway.api_keys_notify (migrations/001_gateway.sql) notifies
# this channel with the key id of every key that changes.
KEYS_CHANNEL = "idlegrid_gateway_keys"
LISTENER_APP_NAME = "idlegrid-gateway-keys"

Db = asyncpg.Pool | asyncpg.Connection


class PoolBusy(Exception):
    """No database connection came free within the acquire timeout."""


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool, *, timeout_s: float) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the pool, or PoolBusy after ``timeout_s``: the request
    path never waits without bound for a connection."""
    try:
        conn = await pool.acquire(timeout=timeout_s)
    except TimeoutError:
        raise PoolBusy from None
    try:
        yield conn
    finally:
        await pool.release(conn)


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
    expires_at: float | None = None  # unix seconds; None: never



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
                     provider_id: bytes | None, rate_per_s: int | None, burst: int | None,
                     expires_in_s: int | None = None) -> dt.datetime | None:
    """Writes the key; returns when it expires (None: never)."""
    return await db.fetchval(
        """INSERT INTO gateway.api_keys (key_id, secret_sha256, scope, account_id, provider_id, rate_per_s, burst,
                                         expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7,
                   clock_timestamp() + make_interval(secs => $8::bigint::double precision))
           RETURNING expires_at""",
        key_id, secret_sha256, scope, _uuid(account_id), _uuid(provider_id), rate_per_s, burst, expires_in_s)


async def revoke_key(db: Db, key_id: str) -> bool:
    """Marks a live key revoked; False when there is no such live key."""
    row = await db.fetchrow(
        "UPDATE gateway.api_keys SET revoked_at = clock_timestamp() WHERE key_id = $1 AND revoked_at IS NULL "
        "RETURNING key_id", key_id)
    return row is not None


async def load_key(db: Db, key_id: str) -> KeyRecord | None:
    """The live (not revoked) key with this id, or None."""
    row = await db.fetchrow(
        """SELECT key_id, secret_sha256, scope, account_id, provider_id, rate_per_s, burst,
                  extract(epoch FROM expires_at)::double precision AS expires_at
             FROM gateway.api_keys WHERE key_id = $1 AND revoked_at IS NULL""", key_id)
    if row is None:
        return None
    return KeyRecord(
        key_id=row["key_id"], secret_sha256=bytes(row["secret_sha256"]), scope=row["scope"],
        account_id=_bytes(row["account_id"]), provider_id=_bytes(row["provider_id"]),
        rate_per_s=row["rate_per_s"], burst=row["burst"], expires_at=row["expires_at"])


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


# -- the audit trail ----------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One row of gateway.audit: who (``actor``: an admin key id or "cli"),
    did what, to which account or key, for how much, with which result."""

    actor: str
    action: str
    result: str
    account_id: bytes | None = None
    target_key_id: str | None = None
    amount_micros: int | None = None
    idempotency_key: str | None = None
    detail: str = ""
    seq: int = 0  # set by the database
    at: dt.datetime | None = None  # set by the database


_AUDIT_COLUMNS = "actor, action, result, account_id, target_key_id, amount_micros, idempotency_key, detail"


async def insert_audit(db: Db, e: AuditEntry) -> int:
    return await db.fetchval(
        f"INSERT INTO gateway.audit ({_AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq",
        e.actor, e.action, e.result, _uuid(e.account_id), e.target_key_id, e.amount_micros, e.idempotency_key,
        e.detail)


async def list_audit(db: Db, *, before_seq: int | None, limit: int) -> list[AuditEntry]:
    """The newest ``limit`` entries older than ``before_seq`` (all when None)."""
    rows = await db.fetch(
        f"SELECT seq, at, {_AUDIT_COLUMNS} FROM gateway.audit WHERE $1::bigint IS NULL OR seq < $1 "
        "ORDER BY seq DESC LIMIT $2", before_seq, limit)
    return [AuditEntry(seq=r["seq"], at=r["at"], actor=r["actor"], action=r["action"], result=r["result"],
                       account_id=_bytes(r["account_id"]), target_key_id=r["target_key_id"],
                       amount_micros=r["amount_micros"], idempotency_key=r["idempotency_key"], detail=r["detail"])
            for r in rows]


# -- admin money (the caps) ---------------------------------------------------

_TODAY = "(clock_timestamp() AT TIME ZONE 'UTC')::date"


async def money_lock(conn: asyncpg.Connection, action: str) -> None:
    """Serializes the cap checks of ``action`` across replicas until the
    transaction ends (admin money operations are rare)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"idlegrid.gateway.admin_money.{action}")


@dataclass(frozen=True, slots=True)
class MoneyRow:
    status: str
    account_id: bytes
    amount_micros: int


async def money_row(conn: asyncpg.Connection, *, action: str, idempotency_key: str) -> MoneyRow | None:
    """The operation with this idempotency key, locked, or None."""
    row = await conn.fetchrow(
        "SELECT status, account_id, amount_micros FROM gateway.admin_money "
        "WHERE action = $1 AND idempotency_key = $2 FOR UPDATE", action, idempotency_key)
    return MoneyRow(row["status"], row["account_id"].bytes, row["amount_micros"]) if row else None


async def money_used_today(conn: asyncpg.Connection, *, action: str, key_id: str) -> tuple[int, int]:
    """(by this key, by every key) of ``action`` today (UTC), refused ones aside."""
    row = await conn.fetchrow(
        f"""SELECT coalesce(sum(amount_micros) FILTER (WHERE key_id = $2), 0) AS by_key,
                   coalesce(sum(amount_micros), 0) AS by_all
              FROM gateway.admin_money WHERE action = $1 AND day = {_TODAY} AND status <> 'refused'""",
        action, key_id)
    return int(row["by_key"]), int(row["by_all"])


async def money_reserve(conn: asyncpg.Connection, *, action: str, idempotency_key: str, key_id: str,
                        account_id: bytes, amount_micros: int) -> None:
    """Writes the operation as pending today (again, when it was refused before)."""
    await conn.execute(
        f"""INSERT INTO gateway.admin_money (action, idempotency_key, key_id, account_id, amount_micros, day, status)
            VALUES ($1, $2, $3, $4, $5, {_TODAY}, 'pending')
            ON CONFLICT (action, idempotency_key) DO UPDATE
               SET key_id = EXCLUDED.key_id, account_id = EXCLUDED.account_id,
                   amount_micros = EXCLUDED.amount_micros, day = EXCLUDED.day, status = 'pending'""",
        action, idempotency_key, key_id, _uuid(account_id), amount_micros)


async def money_finish(conn: asyncpg.Connection, *, action: str, idempotency_key: str, status: str) -> None:
    await conn.execute(
        "UPDATE gateway.admin_money SET status = $3 WHERE action = $1 AND idempotency_key = $2",
        action, idempotency_key, status)
