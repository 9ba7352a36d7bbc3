"""Signs the chain head, off the writer's hot path: a periodic task reads the
committed head (a plain read that never waits for the writer) and, when it
moved, appends a signed checkpoint to the log outside the database (fsync'd),
then copies it into ``ledger.checkpoints``. The service checkpoints once at
start and once more at stop, after the writer has drained.

Before it signs a new head, the task checks that the batch of its last
checkpoint still has the hash it signed. If not, someone rewrote history
behind the service: it logs a critical error and signs nothing more (so a
rewritten chain is never blessed); ``ledger verify`` reports the rewrite.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from idlegrid.common.errors import ConfigError
from idlegrid.ledger.checkpoint_keys import key_id
from idlegrid.ledger.checkpoint_log import Checkpoint, CheckpointLog
from idlegrid.ledger.checkpoint_settings import CheckpointSettings
from idlegrid.ledger.store import checkpoints as store

log = structlog.get_logger("ledger.checkpoints")


class Checkpointer:
    def __init__(self, settings: CheckpointSettings, key: Ed25519PrivateKey) -> None:
        self._pool: asyncpg.Pool | None = None
        self._settings = settings
        self._key = key
        self._key_id = key_id(key.public_key())
        self._log = CheckpointLog(settings.log_path)
        self._last: Checkpoint | None = None
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.halted = False
        self.written = 0

    @property
    def last(self) -> Checkpoint | None:
        return self._last

    async def open(self) -> None:
        """Opens the log (a ConfigError when it cannot be used), before anything else starts."""
        try:
            self._last = await asyncio.to_thread(self._log.open_for_append)
        except (OSError, ValueError) as e:
            raise ConfigError(f"ledger checkpoint log (IDLEGRID_LEDGER_CHECKPOINT_LOG): {e}") from None

    async def start(self, pool: asyncpg.Pool) -> None:
        """Checkpoints the head now (a crash may have left it unsigned), then every every_s."""
        self._pool = pool
        await self.checkpoint()
        self._task = asyncio.create_task(self._run(), name="ledger-checkpoints")

    async def stop(self, *, final: bool = True) -> None:
        """Stops the task and (``final``) checkpoints the last head; call it after the writer stopped."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if not final:
            return
        try:
            await self.checkpoint()
        except Exception as e:  # noqa: BLE001 - stopping anyway; verify reports an uncovered tail
            log.error("ledger.checkpoint_failed", error=str(e), at="stop")

    async def checkpoint(self) -> Checkpoint | None:
        """Signs and appends the current head if it moved. Returns the checkpoint
        that covers the head (None: nothing to sign yet, or halted)."""
        async with self._lock:
            if self.halted or self._pool is None:
                return None
            async with self._pool.acquire() as conn:
                head = await store.chain_head(conn)
                last = self._last
                if last is not None and head.batch <= last.batch:
                    if head.batch < last.batch:
                        self._halt(f"the chain head (batch {head.batch}) is behind the last checkpoint "
                                   f"(batch {last.batch})", last)
                        return None
                    return last
                if last is not None and last.batch > 0:
                    stored = await store.batch_hash(conn, last.batch)
                    if stored != (last.hash, last.last_seq):
                        self._halt(f"batch {last.batch} no longer has the hash it was checkpointed with", last)
                        return None
            if head.batch == 0:
                return None
            cp = Checkpoint(n=(last.n + 1) if last else 1, batch=head.batch, last_seq=head.last_seq,
                            hash=head.hash, at=datetime.now(UTC), key=self._key_id).signed(self._key)
            await asyncio.to_thread(self._log.append, cp)
            self._last = cp
            self.written += 1
        try:
            async with self._pool.acquire() as conn:
                await store.record(conn, n=cp.n, batch=cp.batch, last_seq=cp.last_seq, hash_=cp.hash,
                                   signed_at=cp.at, key_id=cp.key, signature=cp.sig)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as e:
            log.warning("ledger.checkpoint_copy_failed", n=cp.n, error=str(e))  # the log is the authority
        return cp

    def _halt(self, why: str, last: Checkpoint) -> None:
        self.halted = True
        log.critical("ledger.history_rewritten", reason=why, checkpoint=last.n, batch=last.batch,
                     action="checkpointing stopped; run idlegrid ledger verify")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.every_s)
            try:
                await self.checkpoint()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - retried next tick; verify reports a lasting gap
                log.error("ledger.checkpoint_failed", error=str(e))
