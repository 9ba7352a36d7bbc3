"""The life of one job, step by step:

    check the request ─▶ plan (planning) ─▶ the platform's tokenizer (counting)
      ─▶ admit (a usage-record slot, recording) ─▶ reserve the job's maximum
      cost on the partner's credit lease (leases) ─▶ dispatch (with retries on
      other nodes) ─▶ bill (billing, whatever way the job ended) ─▶ record the
      usage in metering, durably ─▶ only then the final chunk or the answer;
      a token-count disagreement is reported to the registry (disagreements)

Metering clears each lease for the exact sum of its records. Nothing is
reserved before planning and admission succeed; once reserved, every way out
of the job (an answer, a failure, a deadline, a client that left) bills
exactly what was delivered, records it, and returns the reservation with the
job's exact cost. A job whose record cannot be made durable before its
deadline gets no answer and is not billed.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from idlegrid.common.clearing import PICOS_PER_MICRO
from idlegrid.common.errors import AlreadyExists, DeadlineExceeded, Unavailable
from idlegrid.common.node_view import NodeTable
from idlegrid.scheduler import billing, counting, planning
from idlegrid.scheduler.disagreements import DisagreementReporter
from idlegrid.scheduler.dispatch import Dispatcher, Emit, Outcome, routing_pb
from idlegrid.scheduler.lease_book import Reservation
from idlegrid.scheduler.leases import Leases
from idlegrid.scheduler.recording import RECORDS_IN_FLIGHT_MAX, UsageRecorder, Written
from idlegrid.scheduler.requests import check
from idlegrid.scheduler.triton import TritonPool
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

log = structlog.get_logger("scheduler.jobs")

SYNC_WAIT_S = 3.0
# A job's exact cost on its lease by how its record was written (None: the record's cost).
_COSTS = {Written.DURABLE: None, Written.LANDED: None, Written.VOIDED: 0, Written.REFUSED: 0, Written.DUPLICATE: 0}
_COUNTED = frozenset({Written.DURABLE, Written.LANDED, Written.VOIDED})  # a record of the lease is in metering
RECORD_GRACE_S = 30.0  # a job that failed (or whose client left) still has its record written for this long


class Jobs:
    def __init__(self, table: NodeTable, triton: TritonPool, leases: Leases, metering, *,
                 records_in_flight_max: int = RECORDS_IN_FLIGHT_MAX, known_metadata=None,
                 registry=None, spot_checks=None) -> None:
        """``registry``: the RegistryServiceStub (scheduler's token) that hears
        of token-count disagreements; None: they are only logged.
        ``spot_checks``: the SpotChecker offered each completed job once its
        usage is recorded; None: no spot checks."""
        self._table = table
        self.leases = leases  # this replica's credit leases
        self._dispatcher = Dispatcher(triton, known_metadata=known_metadata)
        self._recorder = UsageRecorder(metering, records_in_flight_max=records_in_flight_max,
                                       spot_checks=spot_checks)
        self.reporter = DisagreementReporter(registry) if registry is not None else None

    async def run(self, req: spb.InferRequest, emit: Emit | None = None) -> spb.InferResponse:
        """Runs one job. With ``emit``, streams InferChunks as they come."""
        check(req)
        started_ns, t0_s = time.time_ns(), time.monotonic()
        await self._synced()
        plan = planning.route(self._table, req)
        # Count the prompt once, with the catalog's tokenizer (billing reuses
        # the count); a model the platform cannot count is refused here.
        counter = counting.platform_counter(plan[0].model) if planning.takes_text(plan) else None
        job = planning.prepare(req, plan, counter=counter, started_ns=started_ns, t0_s=t0_s)
        deadline = t0_s + min(job.timeout_s, self.leases.max_job_s)  # metering clears a lost lease after max_job_s
        self._recorder.admit()
        try:
            r = await self.leases.reserve(req.consumer_account_id, job.hold_micros, deadline=deadline)
        except BaseException:
            self._recorder.release()  # nothing reserved: nothing to record
            raise
        out = Outcome()
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._dispatcher.run(job, out, emit)
        except TimeoutError:
            self._bill(job, out, r, deadline=time.monotonic() + RECORD_GRACE_S)
            raise DeadlineExceeded(f"the job ran past {int(job.timeout_s * 1000)} ms") from None
        except BaseException:  # the client left (cancelled), or an error: bill what was delivered
            self._bill(job, out, r, deadline=time.monotonic() + RECORD_GRACE_S)
            raise
        usage, written = self._bill(job, out, r, deadline=max(deadline, time.monotonic() + 1.0))
        how = await asyncio.shield(written)  # the answer waits for the record to be durable
        if how is not Written.DURABLE:
            if how is Written.DUPLICATE:
                raise AlreadyExists("this job id was used before", reason="job_exists")
            raise Unavailable("the job's usage could not be recorded in time; it gets no answer and is not "
                              "charged (unless an interrupted write stored it)", reason="usage_not_recorded")
        if not out.delivered and not out.complete:
            raise Unavailable("every node attempt failed before producing output; nothing was charged")
        if emit is not None:
            await emit(spb.InferChunk(final=spb.Final(finish_reason=out.finish_reason, usage=usage)))
        return spb.InferResponse(job_id=req.job_id, text="".join(out.text), finish_reason=out.finish_reason,
                                 outputs=out.outputs, usage=usage, routing=routing_pb(out))

    @property
    def records_in_flight(self) -> int:
        """Jobs admitted whose usage record is not yet durable in metering."""
        return self._recorder.in_flight

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Waits for usage records and disagreement reports still being
        written (graceful stop, tests)."""
        await self._recorder.drain(timeout_s)
        if self.reporter is not None:
            await self.reporter.drain(timeout_s)

    async def _synced(self) -> None:
        if not self._table.synced.is_set():
            try:
                await asyncio.wait_for(self._table.synced.wait(), SYNC_WAIT_S)
            except TimeoutError:
                raise Unavailable("the scheduler has not yet synced with the registry") from None

    def _bill(self, job: planning.Job, out: Outcome, r: Reservation, *,
              deadline: float) -> tuple[spb.Usage, asyncio.Future]:
        """Counts the usage now and hands its record to the recorder; returns
        what the caller is told and the record's write (a future of Written).
        Once written (or given up), the reservation returns to the lease with
        the exact cost. Called exactly once per reserved job."""
        try:
            counter = counting.counter_for(out.choice.model) if job.llm and billing.billable(out) else None
            usage = billing.bill(job, out, counter=counter)
            record = billing.record_pb(job, usage, finished_ns=time.time_ns(), lease_id=r.lease.lease_id,
                                       duration_ms=int((time.monotonic() - job.t0_s) * 1000))
        except BaseException:
            self._recorder.release()  # a bug: the lease keeps the whole reservation as spent (never overspent)
            self.leases.finish(r, r.micros * PICOS_PER_MICRO, recorded=False)
            raise
        if usage.mismatch is not None:
            info = out.choice.info
            info.mismatches += 1
            log.warning("job.token_mismatch", node_id=info.node_id.hex(), platform=usage.mismatch,
                        node=(out.node_in, out.node_out))
            if self.reporter is not None:
                self.reporter.report(node_id=info.node_id, job_id=job.request.job_id, platform=usage.mismatch,
                                     node=(out.node_in, out.node_out))

        def settle(how: Written) -> None:
            # The lease counts every record of it that metering holds (the job's, or its void), so
            # CloseLease's count is exact; one whose fate is unknown keeps its whole reservation spent
            # (the lease never overspends) and is not counted (metering clears the lease at expiry).
            cost = _COSTS.get(how, r.micros * PICOS_PER_MICRO)
            self.leases.finish(r, usage.cost_picos if cost is None else cost, recorded=how in _COUNTED)

        written = self._recorder.record(record, deadline=deadline, job=job, out=out, on_done=settle)
        return billing.usage_pb(usage), written
