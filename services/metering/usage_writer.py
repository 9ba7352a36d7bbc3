"""Group commit of usage records: RecordUsage and RecordUsageBatch calls wait
in a bounded queue; one writer drains them into one commit and answers each
call when its records are durable (committed).

The writer keeps a connection of its own, so a commit costs no pool
round trips. When every record is new (the usual case) a batch is one
statement, its own transaction (a few records), or one binary COPY (many);
else (a retried job id, a lease that takes no records) a transaction with a
single INSERT ... SELECT FROM unnest(...) ON CONFLICT sorts the calls out.

Each call is all or nothing: a call whose record conflicts with a stored one
(ABORTED), or whose lease takes no records (FAILED_PRECONDITION), has its new
rows taken back in the same transaction, and the other calls of the batch
commit. A job id queued by two calls at once goes in two successive batches,
so the second sees the first's row (created=false, or a conflict)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import structlog

from idlegrid.common.errors import (
    Conflict,
    FailedPrecondition,
    IdlegridError,
    ResourceExhausted,
    Unavailable,
)
from idlegrid.metering import store, usage

log = structlog.get_logger("metering.usage_writer")

RECORDS_PER_COMMIT_MAX = 4_000
QUEUE_RECORDS_MAX = 100_000
RELEASE_TIMEOUT_S = 5.0
KEEP_CONN_POOL_MIN = 3  # a smaller pool is not left one connection short


@dataclass(slots=True)
class _Call:
    rows: list[tuple]  # usage.validate's tuples, distinct job ids
    whole_rows: bool  # answer the stored rows (RecordUsage), else created flags
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class UsageWriter:
    """Metering's writer of usage records. ``on_created(per_job)``: called after
    a commit that stored records, ``per_job`` whether any of them is settled
    per job (not on a lease)."""

    def __init__(self, pool: asyncpg.Pool, *, on_created: Callable[[bool], None] | None = None,
                 records_per_commit_max: int = RECORDS_PER_COMMIT_MAX,
                 queue_records_max: int = QUEUE_RECORDS_MAX) -> None:
        self._pool = pool
        self._on_created = on_created
        self._queue: deque[_Call] = deque()
        self._queued = 0  # records in the queue
        self._ready = asyncio.Event()
        self._max = records_per_commit_max
        self._queue_max = queue_records_max
        self._task: asyncio.Task | None = None
        self._conn = None  # the writer's own connection, taken from the pool when first needed
        self._keep_conn = pool.get_max_size() >= KEEP_CONN_POOL_MIN  # else give it back after each commit
        self.commits = 0  # transactions committed (for tests and benchmarks)
        self.records = 0  # records stored

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="metering-usage-writer")

    async def stop(self) -> None:
        """Finishes what is queued (while the writer runs), then stops."""
        while self._queue and self._task is not None and not self._task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._fail(list(self._queue), Unavailable("metering is shutting down; retry with the same job ids"))
        self._queue.clear()
        await self._drop_connection()

    async def record(self, rows: list[tuple], *, whole_rows: bool = False) -> list:
        """Stores ``rows`` in the next commit; returns, per row, whether it was
        created, or (stored row, created) with ``whole_rows``, once durable."""
        if self._task is None or self._task.done():
            raise Unavailable("metering is not accepting usage now; retry with the same job ids")
        if self._queued + len(rows) > self._queue_max:
            raise ResourceExhausted("metering's usage queue is full; retry with the same job ids")
        call = _Call(rows, whole_rows)
        self._queue.append(call)
        self._queued += len(rows)
        self._ready.set()
        return await call.future

    def _take(self) -> list[_Call]:
        """The next batch: calls in order up to the record bound, none sharing a job id."""
        calls: list[_Call] = []
        jobs: set = set()
        count = 0
        skipped: list[_Call] = []
        while self._queue:
            call = self._queue[0]
            if calls and count + len(call.rows) > self._max:
                break
            self._queue.popleft()
            ids = {r[0] for r in call.rows}
            if not jobs.isdisjoint(ids):
                skipped.append(call)  # the next batch
                continue
            jobs |= ids
            calls.append(call)
            count += len(call.rows)
        self._queue.extendleft(reversed(skipped))
        self._queued -= count
        return calls

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            calls = self._take()
            try:
                answers = await self._commit(calls)
                if not self._keep_conn:
                    await self._drop_connection()
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as e:
                log.error("usage.batch_failed", error=str(e), calls=len(calls))
                self._fail(calls, Unavailable("metering could not store usage; retry with the same job ids"))
                await self._drop_connection()  # the next batch starts on a fresh one
            except asyncio.CancelledError:
                self._fail(calls, Unavailable("metering is shutting down; retry with the same job ids"))
                raise
            except Exception as e:  # a bug: fail this batch loudly, keep serving the next ones
                log.critical("usage.batch_crashed", error=repr(e), exc_info=e)
                self._fail(calls, IdlegridError("metering internal error; nothing was stored"))
                await self._drop_connection()
            else:
                for call, answer in zip(calls, answers, strict=True):
                    if call.future.done():
                        continue
                    if isinstance(answer, Exception):
                        call.future.set_exception(answer)
                    else:
                        call.future.set_result(answer)

    @staticmethod
    def _fail(calls: list[_Call], err: Exception) -> None:
        for call in calls:
            if not call.future.done():
                call.future.set_exception(err)

    async def _connection(self):
        if self._conn is None:
            self._conn = await self._pool.acquire()
        return self._conn

    async def _drop_connection(self) -> None:
        """Gives the connection back (the pool resets it, or replaces a broken one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.release(conn), RELEASE_TIMEOUT_S)

    async def _commit(self, calls: list[_Call]) -> list:
        rows = [r for call in calls for r in call.rows]
        whole = any(call.whole_rows for call in calls)
        conn = await self._connection()
        if not whole and await store.store_new(conn, rows):  # the usual case: every record is new
            self.commits += 1
            self.records += len(rows)
            if self._on_created is not None:
                self._on_created(any(r[usage.LEASE_AT] is None for r in rows))
            return [[True] * len(call.rows) for call in calls]
        async with conn.transaction():  # a call wants its stored rows, a job id is stored, or a lease is shut
            inserted = await store.insert_many(conn, rows, whole_rows=whole)
            answers, new, undo = await self._sort_out(conn, calls, rows, inserted)
        self.commits += 1
        created = len(new) - len(undo)
        self.records += created
        if created and self._on_created is not None:
            undone = set(undo)
            self._on_created(any(r[usage.LEASE_AT] is None for r in rows if r[0] in new and r[0] not in undone))
        return answers

    async def _sort_out(self, conn, calls: list[_Call], rows: list[tuple], inserted: list) -> tuple:
        """Per call, its answer (or its error, its new rows taken back)."""
        new = {r["job_id"]: r for r in inserted}
        missing = [r[0] for r in rows if r[0] not in new]
        old = {r["job_id"]: r for r in await store.get_many(conn, missing)} if missing else {}
        answers, undo = [], []
        for call in calls:
            answer = self._answer(call, new, old)
            if isinstance(answer, Exception):
                undo.extend(r[0] for r in call.rows if r[0] in new)
            answers.append(answer)
        if undo:
            await store.delete_new(conn, undo)
        return answers, new, undo

    @staticmethod
    def _answer(call: _Call, new: dict, old: dict):
        out = []
        for values in call.rows:
            job = values[0]
            if job in new:
                out.append((new[job], True) if call.whole_rows else True)
                continue
            row = old.get(job)
            if row is None:
                return FailedPrecondition(f"job {job.hex}: its lease is unknown, not open, or another partner's")
            if not usage.same(row, values):
                return Conflict("a different usage record exists for this job")
            out.append((row, False) if call.whole_rows else False)
        return out
