"""Group commit: concurrent requests wait in a bounded queue; one writer
drains it into a single database transaction per batch (chain head locked
first, then accounts in id order, so writers never deadlock), and answers
every request when the batch has committed."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import asyncpg
import structlog

from idlegrid.common.errors import IdlegridError, ResourceExhausted, Unavailable
from idlegrid.ledger.chain import batch_hash, from_micros, micros, transfer_bytes
from idlegrid.ledger.codes import BATCH_SIZE_MAX, EXPIRED, VOID, R
from idlegrid.ledger.engine import Batch, InvariantViolation, hold_states
from idlegrid.ledger.ids import expiry_void_id
from idlegrid.ledger.store import batches as store
from idlegrid.ledger.values import Transfer

log = structlog.get_logger("ledger.writer")

QUEUE_REQUESTS_MAX = 16_384
SWEEP_INTERVAL_S = 1.0
LINGER_S = 0.0005
LINGER_BELOW_TRANSFERS = 256


@dataclass(slots=True)
class _Request:
    transfers: list[Transfer]
    internal: bool
    whole_chains: bool = False
    notes: dict | None = None
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def expiry_void(pending_id: bytes) -> Transfer:
    """The void the expiry sweep creates for a pending transfer (deterministic id)."""
    return Transfer(id=expiry_void_id(pending_id), pending_id=pending_id, flags=VOID | EXPIRED)


class BatchWriter:
    """The ledger's single writer: group-commits the queued requests, one
    batch per transaction, and sweeps expired holds through the same batches."""

    def __init__(self, pool: asyncpg.Pool, *, batch_size_max: int = BATCH_SIZE_MAX,
                 queue_requests_max: int = QUEUE_REQUESTS_MAX,
                 sweep_interval_s: float = SWEEP_INTERVAL_S) -> None:
        self._pool = pool
        self._queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=queue_requests_max)
        self._carry: deque[_Request] = deque()
        self._batch_size_max = batch_size_max
        self._sweep_interval_s = sweep_interval_s
        self._tasks: list[asyncio.Task] = []
        self.batches_committed = 0

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="ledger-writer")]
        if self._sweep_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._sweep(), name="ledger-expiry"))

    async def stop(self) -> None:
        """Finishes what is queued (while the writer runs), then stops."""
        # Bounded: the running writer drains the queue.
        while (not self._queue.empty() or self._carry) and self._tasks and not self._tasks[0].done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(self, transfers: list[Transfer], *, internal: bool = False, whole_chains: bool = False,
                     notes: dict | None = None) -> list[int]:
        """Applies ``transfers`` (one request: chains stay inside it) in the
        next batch and returns one result per transfer once it is durable
        (``whole_chains`` and ``notes``: see ``Batch.apply``)."""
        req = _Request(transfers, internal, whole_chains, notes)
        try:
            self._queue.put_nowait(req)
        except asyncio.QueueFull:
            raise ResourceExhausted("ledger write queue is full; retry with the same ids") from None
        return await req.future

    def _drain(self, items: list[_Request], count: int) -> int:
        while not self._queue.empty() and not self._carry:
            nxt = self._queue.get_nowait()
            if count + len(nxt.transfers) > self._batch_size_max:
                self._carry.append(nxt)
                break
            items.append(nxt)
            count += len(nxt.transfers)
        return count

    async def _run(self) -> None:
        concurrent = False
        while True:
            first = self._carry.popleft() if self._carry else await self._queue.get()
            items = [first]
            count = self._drain(items, len(first.transfers))
            # Under concurrency (the last batch grouped requests), linger a
            # moment so that the batch fills: fewer, larger commits leave the
            # CPU to the callers. A lone caller never waits.
            if concurrent and count < LINGER_BELOW_TRANSFERS and not self._carry:
                await asyncio.sleep(LINGER_S)
                count = self._drain(items, count)
            concurrent = len(items) > 1
            try:
                results = await self._commit(items)
            except InvariantViolation as e:
                log.critical("ledger.invariant_violated", error=str(e))
                err: IdlegridError = IdlegridError(f"ledger invariant violated: {e}")
                self._fail(items, err)
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as e:
                log.error("ledger.batch_failed", error=str(e), requests=len(items))
                self._fail(items, Unavailable("ledger write failed; retry with the same ids"))
            except asyncio.CancelledError:
                self._fail(items, Unavailable("ledger is shutting down; retry with the same ids"))
                raise
            except Exception as e:  # a bug: fail this batch loudly, keep serving the next ones
                log.critical("ledger.batch_crashed", error=repr(e), exc_info=e)
                self._fail(items, IdlegridError("ledger internal error; nothing was written"))
            else:
                for it, res in zip(items, results, strict=True):
                    if not it.future.done():
                        it.future.set_result(res)

    @staticmethod
    def _fail(items: list[_Request], err: Exception) -> None:
        for it in items:
            if not it.future.done():
                it.future.set_exception(err)

    async def _commit(self, items: list[_Request]) -> list[list[int]]:
        ids: set[bytes] = set()
        pendings: set[bytes] = set()
        account_ids: set[bytes] = set()
        for it in items:
            for t in it.transfers:
                ids.add(t.id)
                if len(t.pending_id) == 16:
                    pendings.add(t.pending_id)
                else:
                    account_ids.add(t.debit_account_id)
                    account_ids.add(t.credit_account_id)
        ids = {i for i in ids if len(i) == 16}
        account_ids = {a for a in account_ids if len(a) == 16}
        async with self._pool.acquire() as conn, conn.transaction():
            loaded = await store.prepare(conn, transfer_ids=ids | pendings, pending_ids=pendings,
                                         account_ids=account_ids)
            now_us = micros(loaded.now)
            batch = Batch(now_us, loaded.accounts, loaded.stored, loaded.failed,
                          hold_states(pendings, loaded.resolved, loaded.open_until),
                          first_seq=loaded.last_seq + 1)
            results = [batch.apply(it.transfers, internal=it.internal, whole_chains=it.whole_chains,
                                   notes=it.notes) for it in items]
            totals = batch.totals_delta()
            created = batch.created
            if not created and not batch.burned:
                return results
            batch_no = loaded.head_batch + 1
            hash_ = loaded.prev_hash
            if created:
                hash_ = batch_hash(loaded.prev_hash, batch_no, created[0].seq, created[-1].seq, now_us, [
                    transfer_bytes(s.seq, s.id, s.debit_account_id, s.credit_account_id, s.amount,
                                   s.pending_id, s.user_data, s.timeout_s, s.ledger, s.code, s.flags)
                    for s in created])
            opened, closed = batch.hold_changes()
            await store.commit_batch(
                conn, batch=batch_no, prev_hash=loaded.prev_hash, hash_=hash_, now=loaded.now,
                created=created, accounts=batch.dirty_accounts(),
                holds_opened=[(p, from_micros(e) if e is not None else None) for p, e in opened],
                holds_closed=closed, burned=batch.burned, totals=totals)
        if created:
            self.batches_committed += 1
        return results

    async def _sweep(self) -> None:
        """Voids expired holds, by the database clock, through the same batches."""
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                async with self._pool.acquire() as conn:
                    expired = await store.expired_holds(conn, BATCH_SIZE_MAX)
                if expired:
                    results = await self.submit([expiry_void(p) for p in expired], internal=True)
                    log.info("ledger.holds_expired", count=sum(r == R.OK for r in results))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the sweep retries next tick
                log.warning("ledger.sweep_failed", error=str(e))
