"""Authentication of API keys, with an in-memory cache of verified keys that
never outlives a revocation.

The cache is used only while this replica listens on the database channel
``idlegrid_gateway_keys`` (store.KEYS_CHANNEL), which a trigger notifies on
every change to a key when it commits: the entry is dropped at once, here and
on every other replica. If the listening connection is lost (or stops
answering its keepalive), the cache is emptied and bypassed until it is back.
A lookup that raced with a notification is not cached (a generation counter
tells).

Cheap refusals: a key id the database does not know (or knows revoked) is
remembered for a few seconds (IDLEGRID_GATEWAY_UNKNOWN_KEY_TTL_MS, a bounded
LRU), so a flood of the same bad key costs no database work. Only such ids
are remembered: a live key is never in it, so a revocation is never delayed
(and key ids are random, so an unknown id never becomes a live key). A
lookup waits at most IDLEGRID_GATEWAY_DB_ACQUIRE_TIMEOUT_MS for a database
connection, then answers 503 with Retry-After instead of queueing without
bound. An expired key is answered 401 (``expired_api_key``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections import OrderedDict

import asyncpg
import structlog

from idlegrid.gateway import keys, store
from idlegrid.gateway.errors import ApiError
from idlegrid.gateway.metrics import Metrics
from idlegrid.gateway.store import KeyRecord

log = structlog.get_logger("gateway.auth")

KEEPALIVE_S = 2.0
KEEPALIVE_TIMEOUT_S = 2.0
RECONNECT_S_MAX = 5.0


def _unauthorized(message: str, code: str = "invalid_api_key") -> ApiError:
    return ApiError(401, message, code=code, headers={"WWW-Authenticate": 'Bearer realm="idlegrid"'})


class Authenticator:
    def __init__(self, pool: asyncpg.Pool, database_url: str, *, cache_max: int, unknown_ttl_s: float = 5.0,
                 unknown_max: int = 100_000, acquire_timeout_s: float = 1.0, metrics: Metrics | None = None) -> None:
        self._pool = pool
        self._url = database_url
        self._cache_max = cache_max
        self._cache: OrderedDict[str, KeyRecord] = OrderedDict()
        self._unknown_ttl_s = unknown_ttl_s
        self._unknown_max = unknown_max
        self._unknown: OrderedDict[str, float] = OrderedDict()  # key id -> forgotten at (monotonic)
        self._acquire_timeout_s = acquire_timeout_s
        self._metrics = metrics
        self._generation = 0
        self._listening = False
        self._task: asyncio.Task | None = None
        self.listening_event = asyncio.Event()  # set while the cache is in use (tests wait on it)

    # -- the revocation channel ---------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="gateway-keys-listener")
        with contextlib.suppress(TimeoutError):  # without it, every request reads the database
            await asyncio.wait_for(self.listening_event.wait(), 5.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def evict(self, key_id: str) -> None:
        self._generation += 1
        self._cache.pop(key_id, None)

    def _drop_all(self) -> None:
        self._listening = False
        self.listening_event.clear()
        self._generation += 1
        self._cache.clear()

    async def _listen_forever(self) -> None:
        backoff = 0.1
        while True:
            conn = None
            try:
                lost = asyncio.Event()
                conn = await store.listen_for_key_changes(self._url, on_change=self.evict, on_lost=lost.set)
                self._generation += 1
                self._cache.clear()
                self._listening = True
                self.listening_event.set()
                backoff = 0.1
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), KEEPALIVE_S)
                    if not lost.is_set():
                        await store.ping(conn, timeout_s=KEEPALIVE_TIMEOUT_S)
                log.warning("auth.listener_lost")
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
                log.warning("auth.listener_failed", error=type(e).__name__)
            finally:
                self._drop_all()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(RECONNECT_S_MAX, backoff * 2)

    # -- requests -------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> KeyRecord:
        """The key record for an ``Authorization: Bearer <key>`` header; 401
        when it is missing, malformed, unknown or revoked."""
        if not authorization:
            raise _unauthorized("no API key: send the header 'Authorization: Bearer <key>'", "missing_api_key")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise _unauthorized("the Authorization header must be 'Bearer <key>'")
        parsed = keys.parse(key.strip())
        if parsed is None:
            raise _unauthorized("malformed API key")
        key_id, secret = parsed
        rec = self._cache.get(key_id) if self._listening else None
        if rec is None:
            rec = await self._lookup(key_id)
        else:
            self._cache.move_to_end(key_id)
        if rec is None or not hmac.compare_digest(keys.digest(secret), rec.secret_sha256):
            raise _unauthorized("invalid or revoked API key")
        if rec.expires_at is not None and time.time() >= rec.expires_at:
            raise _unauthorized("this API key has expired; ask an admin for a new one", "expired_api_key")
        return rec

    def _known_unknown(self, key_id: str) -> bool:
        forget_at = self._unknown.get(key_id)
        if forget_at is None:
            return False
        if time.monotonic() < forget_at:
            return True
        del self._unknown[key_id]
        return False

    async def _lookup(self, key_id: str) -> KeyRecord | None:
        """The key from the database (cached), or None when it is unknown
        (remembered for a few seconds)."""
        if self._known_unknown(key_id):
            self._count("unknown_cached")
            return None
        generation = self._generation
        try:
            async with store.connection(self._pool, timeout_s=self._acquire_timeout_s) as conn:
                rec = await store.load_key(conn, key_id)
        except store.PoolBusy:
            self._count("busy")
            raise ApiError(503, "the gateway's database connections are all busy; try again",
                           code="database_busy", headers={"Retry-After": "1"}) from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            log.warning("auth.lookup_failed", error=type(e).__name__)
            raise ApiError(503, "cannot verify API keys right now; try again", code="keys_unavailable",
                           headers={"Retry-After": "1"}) from None
        if rec is None:
            self._count("unknown")
            if self._unknown_ttl_s > 0 and self._unknown_max:
                self._unknown[key_id] = time.monotonic() + self._unknown_ttl_s
                self._unknown.move_to_end(key_id)
                if len(self._unknown) > self._unknown_max:
                    self._unknown.popitem(last=False)
            return None
        self._count("found")
        if self._listening and generation == self._generation and self._cache_max:
            self._cache[key_id] = rec
            if len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
        return rec

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.key_checks.labels(result).inc()


def require(rec: KeyRecord, *scopes: str) -> None:
    """403 unless the key has one of ``scopes``."""
    if rec.scope not in scopes:
        raise ApiError(403, f"this route needs a {' or '.join(scopes)} key; this key's scope is {rec.scope}",
                       code="wrong_scope")
