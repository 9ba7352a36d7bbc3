"""Usage records on their way to metering: off the response path (a record
costs a durable write in metering, and the caller need not wait for it),
retried, and with a bounded backlog.

Every job that reserves credits produces exactly one usage record, so a job
takes its record's slot when it is admitted, before it reserves, and gives it
back once metering holds the record durably (or it was given up: the
reservation's timeout is the backstop, so an unrecorded job is never
charged). Hence, at every instant,

    jobs admitted and running + records not yet written <= records_in_flight_max

and when every slot is taken a new job is refused with RESOURCE_EXHAUSTED
(reason ``usage_backlog``) before it reserves anything. The scheduler sheds
load rather than pile up money it has not accounted for while metering is
down or slow; a refused job costs nothing and may be retried.

Once a completed job's record is durable, the job is offered to the spot
checker (spot_checks.py), when one is attached: it decides, without waiting,
whether to check the job again on a trusted node.
"""

from __future__ import annotations

import asyncio

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
RECORD_TRIES = 8
RECORD_TIMEOUT_S = 10.0
RETRY_DELAY_S = 0.1  # doubled after each failed try
DRAIN_TIMEOUT_S = 30.0


class UsageRecorder:
    def __init__(self, metering, *, records_in_flight_max: int = RECORDS_IN_FLIGHT_MAX,
                 spot_checks: SpotChecker | None = None) -> None:
        if records_in_flight_max < 1:
            raise ValueError("records_in_flight_max must be at least 1")
        self._metering = metering  # MeteringServiceStub carrying the service token
        self.spot_checks = spot_checks  # offered each completed job once its record is durable
        self._slots_max = records_in_flight_max
        self._slots = 0  # admitted jobs whose record is not yet written
        self._tasks: set[asyncio.Task] = set()

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

    def record(self, record: mpb.UsageRecord, *, job: Job | None = None, out: Outcome | None = None) -> None:
        """Writes an admitted job's record in the background; its slot is
        given back when the write is done. With the ``job`` and what it
        delivered (``out``), a completed job is then offered to the spot checker."""
        task = asyncio.get_running_loop().create_task(self._write(record, job, out))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self.release()

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Waits for usage records still being written (graceful stop, tests)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    async def _write(self, record: mpb.UsageRecord, job: Job | None = None, out: Outcome | None = None) -> None:
        """Durably records the usage (metering settles it). Retried: the call is idempotent."""
        delay = RETRY_DELAY_S
        for attempt in range(RECORD_TRIES):
            try:
                await self._metering.RecordUsage(mpb.RecordUsageRequest(record=record), timeout=RECORD_TIMEOUT_S)
                self._offer(record, job, out)
                return
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or \
                        attempt == RECORD_TRIES - 1:
                    # The hold expires on its own: the consumer is never overcharged.
                    log.error("job.usage_not_recorded", job_id=record.job_id.hex(), code=e.code().name,
                              details=e.details())
                    return
            await asyncio.sleep(delay)
            delay *= 2

    def _offer(self, record: mpb.UsageRecord, job: Job | None, out: Outcome | None) -> None:
        if self.spot_checks is None or job is None or out is None:
            return
        sample = sample_of(job, out, record)
        if sample is not None:
            self.spot_checks.offer(sample, out.choice.info)
