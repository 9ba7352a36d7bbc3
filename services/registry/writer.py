"""The one writer of the registry's tables: registrations and state changes
are written in the order they happened in memory, consecutive items of one
kind in one statement, and each caller can await its item.

Memory is changed first (it is the live view); the write follows. A failed
write fails the awaiting RPC (UNAVAILABLE) and is logged; the live view
stays as it is. After a restart an agent whose node the database does not
know is told so (UNAUTHENTICATED) and registers again.
"""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
import structlog

from idlegrid.common.errors import IdlegridError, ResourceExhausted, Unavailable
from idlegrid.registry import store
from idlegrid.registry.store import Change, Registration

log = structlog.get_logger("registry.writer")

Item = Change | Registration


class ChangeWriter:
    """Writes node registrations and state changes, in order, in batches."""

    def __init__(self, pool: asyncpg.Pool, *, batch_max: int, pending_max: int) -> None:
        self._pool = pool
        self._batch_max = batch_max
        self._pending_max = pending_max
        self._pending: list[tuple[Item, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="registry-writer")

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def room(self, n: int = 1) -> None:
        """Raises when ``n`` more items would exceed the queue's bound: check
        before changing memory, so that every change gets written."""
        if len(self._pending) + n > self._pending_max:
            raise ResourceExhausted("registry is overloaded (too many unwritten changes); retry")

    def submit(self, item: Item) -> asyncio.Future:
        assert len(self._pending) < self._pending_max, "call room() before changing memory"
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        self._idle.clear()
        self._wake.set()
        return fut

    async def flush(self) -> None:
        """Returns when everything submitted so far is written (or failed)."""
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                for kind, group in itertools.groupby(batch, key=lambda p: type(p[0])):
                    items = list(group)
                    for i in range(0, len(items), self._batch_max):
                        await self._write(kind, items[i:i + self._batch_max])
            self._idle.set()

    async def _write(self, kind: type, items: list[tuple[Item, asyncio.Future]]) -> None:
        fn = store.write_registrations if kind is Registration else store.write_changes
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await fn(conn, [i for i, _ in items])
        except asyncpg.IntegrityConstraintViolationError as e:
            # The database refused what validation let through: a bug, loudly.
            log.error("registry.invariant_violated", kind=kind.__name__, items=len(items), error=str(e))
            self._fail(items, IdlegridError(f"internal: the registry database refused a change ({e})"))
            return
        except (TimeoutError, OSError, asyncpg.PostgresError) as e:
            log.error("registry.write_failed", kind=kind.__name__, items=len(items), error=str(e))
            self._fail(items, Unavailable(f"registry could not persist the change: {e}"))
            return
        for _, fut in items:
            if not fut.done():
                fut.set_result(None)

    @staticmethod
    def _fail(items: list[tuple[Item, asyncio.Future]], exc: Exception) -> None:
        for _, fut in items:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # marks it retrieved: a sweeper may not await it
