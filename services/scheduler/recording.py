"""Usage records on their way to metering, durable before the answer.

A job's record is written through metering.RecordUsageBatch before its
final chunk (or unary answer) is sent: concurrent jobs' records are
coalesced into batches of at most BATCH_MAX records with distinct job ids,
and metering group-commits them. A batch leaves at once when none is on its
way; while one is, new records wait for it to return and leave together in
the next (self-clocked group commit: few large calls instead of many small
ones, which is most of what a record costs metering and the scheduler),
unless BATCH_MORE_MIN records wait or the oldest has waited HOLD_MAX_S: then
another leaves, at most BATCHES_IN_FLIGHT_MAX on the wire. A write is
retried (it is idempotent by job id) until the job's deadline; a record
that cannot be made durable by then fails its job: no answer, and it is not
billed.

A given-up record of a job on a lease is then voided: in its place the
scheduler writes (retrying, idempotently) a zero-cost FAILED record with the
same job id, so every job reserved on a lease ends with exactly one record
and CloseLease's job count is exact. If a try that was cut off stored the
original after all, the void is refused as a different record (ABORTED):
the original stands (the job is billed, though it was not answered), and a
cut-off original that lands after the void is refused the same way. The
job's lease learns which (``on_done``) only then.

Every job that reserves credits produces exactly one usage record, so a job
takes its record's slot when it is admitted, before it reserves, and gives it
back once metering holds the record durably (or it was given up). Hence, at
every instant,

    jobs admitted and running + records not yet written <= records_in_flight_max

and when every slot is taken a new job is refused with RESOURCE_EXHAUSTED
(reason ``usage_backlog``) before it reserves anything.

Once a completed job's record is durable, the job is offered to the spot
checker (spot_checks.py), when one is attached.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import structlog

from idlegrid.common.errors import ResourceExhausted
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.scheduler.checks_run import sample_of
from idlegrid.scheduler.dispatch import Outcome
from idlegrid.scheduler.planning import Job
from idlegrid.scheduler.spot_checks import SpotChecker

log = structlog.get_logger("scheduler.recording")

RECORDS_IN_FLIGHT_MAX = 10_000
BATCH_MAX = 1_000  # RecordUsageBatch's bound
BATCHES_IN_FLIGHT_MAX = 4
# With a batch on its way, another leaves only once this many records wait, or the oldest has waited
# this long (a slow call does not hold the others back for long).
BATCH_MORE_MIN = 100
HOLD_MAX_S = 0.05
RECORD_TIMEOUT_S = 10.0  # one RecordUsageBatch call
RETRY_DELAY_S = 0.1  # doubled after each failed try, at most RETRY_DELAY_MAX_S
RETRY_DELAY_MAX_S = 2.0
DRAIN_TIMEOUT_S = 30.0
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
VOID_FOR_S = 660.0  # a void is retried this long: past it, metering has cleared the lease (max job + slack)


class Written(enum.Enum):
    DURABLE = "durable"  # metering holds the record
    DUPLICATE = "duplicate"  # ABORTED: metering holds another record for this job id; this one is not stored
    REFUSED = "refused"  # metering refused it otherwise: not stored
    GIVEN_UP = "given_up"  # not durable by the deadline (it may have landed if a try was cut off)
    # After a give-up, for the lease (``on_done``): how the job's void ended.
    VOIDED = "voided"  # the zero-cost void record is durable: the original never will be
    LANDED = "landed"  # a cut-off try stored the original: it stands, billed (the job was not answered)


@dataclass(slots=True)
class _Pending:
    record: mpb.UsageRecord
    deadline: float  # monotonic seconds: no try after this
    done: asyncio.Future
    job: Job | None
    out: Outcome | None
    on_done: Callable[[Written], None] | None
    uncertain: bool = False  # a try was cut off: the record may be stored
    tries: int = 0  # retryable failures so far
    solo: bool = False  # to be sent alone (a batch it was in was refused)
    void: bool = False  # the void of a given-up record (see the module's docstring)
    code: grpc.StatusCode | None = None
    queued_at: float = 0.0  # monotonic seconds: first queued (a retry keeps it, so it is due at once)


def void_of(record: mpb.UsageRecord) -> mpb.UsageRecord:
    """The zero-cost FAILED record written in place of a given-up one."""
    return mpb.UsageRecord(
        job_id=record.job_id, consumer_account_id=record.consumer_account_id, model=record.model,
        lease_id=record.lease_id, duration_ms=record.duration_ms, outcome=mpb.OUTCOME_FAILED,
        started_at=record.started_at, finished_at=record.finished_at)


class UsageRecorder:
    def __init__(self, metering, *, records_in_flight_max: int = RECORDS_IN_FLIGHT_MAX,
                 spot_checks: SpotChecker | None = None) -> None:
        if records_in_flight_max < 1:
            raise ValueError("records_in_flight_max must be at least 1")
        self._metering = metering  # MeteringServiceStub carrying the service token
        self.spot_checks = spot_checks  # offered each completed job once its record is durable
        self._slots_max = records_in_flight_max
        self._slots = 0  # admitted jobs whose record is not yet written
        self._queue: deque[_Pending] = deque()
        self._sending = 0
        self._hold: asyncio.TimerHandle | None = None  # pumps again when the oldest waiting record is due
        self._tasks: set[asyncio.Task] = set()
        self._waiting: set[asyncio.Future] = set()
        self.batches = 0  # RecordUsageBatch calls (figures)

    @property
    def in_flight(self) -> int:
        return self._slots

    def admit(self) -> None:
        """Takes a slot for a new job's record, or refuses the job."""
        if self._slots >= self._slots_max:
            log.warning("job.usage_backlog", in_flight=self._slots)
            raise ResourceExhausted(
                f"the scheduler has {self._slots} usage records still to write; retry shortly",
                reason="usage_backlog")
        self._slots += 1

    def release(self) -> None:
        """Gives back an admitted job's slot when it ends with nothing to record
        (its reservation was refused)."""
        if self._slots <= 0:
            raise AssertionError("a usage-record slot was given back twice")
        self._slots -= 1

    def record(self, record: mpb.UsageRecord, *, deadline: float, job: Job | None = None,
               out: Outcome | None = None, on_done: Callable[[Written], None] | None = None) -> asyncio.Future:
        """Queues an admitted job's record; the returned future resolves to
        how it was Written (it is not cancelled with the caller). Then, in
        order: ``on_done`` is called, the slot given back, and a completed job
        (``job`` and what it delivered, ``out``) offered to the spot checker."""
        fut = asyncio.get_running_loop().create_future()
        self._waiting.add(fut)
        fut.add_done_callback(self._waiting.discard)
        self._queue.append(_Pending(record, deadline, fut, job, out, on_done, queued_at=time.monotonic()))
        self._pump()
        return fut

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Waits for usage records still being written (graceful stop, tests)."""
        if self._waiting:
            await asyncio.wait(list(self._waiting), timeout=timeout_s)

    # ------------------------------------------------------------ batching

    def _pump(self) -> None:
        while self._queue and self._sending < BATCHES_IN_FLIGHT_MAX:
            if self._sending and not self._more_due():
                return
            batch = self._take()
            if not batch:
                return
            self._sending += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _more_due(self) -> bool:
        """With a batch on its way: whether another leaves now (else a timer
        pumps again when the oldest waiting record is due)."""
        if len(self._queue) >= BATCH_MORE_MIN:
            return True
        wait_s = self._queue[0].queued_at + HOLD_MAX_S - time.monotonic()
        if wait_s <= 0:
            return True
        if self._hold is None:
            self._hold = asyncio.get_running_loop().call_later(wait_s, self._held)
        return False

    def _held(self) -> None:
        self._hold = None
        self._pump()

    def _take(self) -> list[_Pending]:
        """The next batch: distinct job ids, a refused batch's records alone."""
        now, batch, ids, rest = time.monotonic(), [], set(), deque()
        while self._queue and len(batch) < BATCH_MAX:
            p = self._queue.popleft()
            if now >= p.deadline:
                self._finish(p, Written.GIVEN_UP)
                continue
            if p.record.job_id in ids or (p.solo and batch) or (batch and batch[0].solo):
                rest.append(p)
                continue
            batch.append(p)
            ids.add(p.record.job_id)
        self._queue.extendleft(reversed(rest))
        return batch

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            timeout = min(RECORD_TIMEOUT_S, max(0.05, max(p.deadline for p in batch) - time.monotonic()))
            self.batches += 1
            try:
                await self._metering.RecordUsageBatch(
                    mpb.RecordUsageBatchRequest(records=[p.record for p in batch]), timeout=timeout)
            except grpc.aio.AioRpcError as e:
                self._failed(batch, e)
                return
            for p in batch:
                self._finish(p, Written.DURABLE)
        finally:
            self._sending -= 1
            self._pump()

    def _failed(self, batch: list[_Pending], e: grpc.aio.AioRpcError) -> None:
        if e.code() in RETRYABLE:
            for p in batch:
                p.uncertain = p.uncertain or e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                p.tries += 1
            delay = RETRY_DELAY_S * 2 ** min(6, batch[0].tries - 1)
            self._later(batch, min(delay, RETRY_DELAY_MAX_S))
            return
        if len(batch) > 1:  # one bad record must not fail the others: each alone
            for p in batch:
                p.solo = True
            self._queue.extendleft(reversed(batch))
            return
        p = batch[0]
        p.code = e.code()
        log.error("job.usage_not_recorded", job_id=p.record.job_id.hex(), code=e.code().name, details=e.details())
        self._finish(p, Written.DUPLICATE if e.code() == grpc.StatusCode.ABORTED else Written.REFUSED)

    def _later(self, batch: list[_Pending], delay: float) -> None:
        async def requeue() -> None:
            await asyncio.sleep(delay)
            self._queue.extendleft(reversed(batch))
            self._pump()

        task = asyncio.get_running_loop().create_task(requeue())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish(self, p: _Pending, how: Written) -> None:
        if how is Written.GIVEN_UP and not p.void and p.record.lease_id:
            self._void(p)
            return
        if p.void:  # how the void ended, for the lease: only a durable void or the original tell
            how = {Written.DURABLE: Written.VOIDED, Written.DUPLICATE: Written.LANDED}.get(how, Written.GIVEN_UP)
        if how is Written.GIVEN_UP:
            log.error("job.usage_not_recorded", job_id=p.record.job_id.hex(), why="deadline",
                      maybe_stored=p.uncertain, void=p.void)
        try:
            if p.on_done is not None:
                p.on_done(how)
        finally:
            self.release()
            if not p.done.done():
                p.done.set_result(how)
            if how is Written.DURABLE:
                self._offer(p.record, p.job, p.out)

    def _void(self, p: _Pending) -> None:
        """The job gets no answer now; its record's slot passes to the void,
        and the lease hears how the void ended."""
        log.warning("job.usage_given_up", job_id=p.record.job_id.hex(), maybe_stored=p.uncertain, tries=p.tries)
        if not p.done.done():
            p.done.set_result(Written.GIVEN_UP)
        fut = asyncio.get_running_loop().create_future()
        self._waiting.add(fut)
        fut.add_done_callback(self._waiting.discard)
        now = time.monotonic()
        self._queue.append(_Pending(void_of(p.record), now + VOID_FOR_S, fut, None, None, p.on_done, void=True,
                                    queued_at=now))

    def _offer(self, record: mpb.UsageRecord, job: Job | None, out: Outcome | None) -> None:
        if self.spot_checks is None or job is None or out is None:
            return
        sample = sample_of(job, out, record)
        if sample is not None:
            self.spot_checks.offer(sample, out.choice.info)
