"""The life of one job, step by step:

    check the request ─▶ plan (planning) ─▶ the platform's tokenizer (counting)
      ─▶ admit (a usage-record slot, recording) ─▶ reserve the hold on the ledger
      ─▶ dispatch (with retries on other nodes) ─▶ bill (billing, whatever way
      the job ended) ─▶ record the usage in metering; a token-count
      disagreement is reported to the registry (disagreements)

Metering settles each record on the ledger exactly once. Nothing is reserved
before planning and admission succeed; once reserved, every way out of the
job (an answer, a failure, a deadline, a client that left) bills exactly
what was delivered and records it.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import structlog

from idlegrid.common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    IdlegridError,
    InsufficientFunds,
    NotFound,
    Unavailable,
    from_rpc_error,
)
from idlegrid.common.node_view import NodeTable
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.scheduler import billing, counting, planning
from idlegrid.scheduler.disagreements import DisagreementReporter
from idlegrid.scheduler.dispatch import Dispatcher, Emit, Outcome, routing_pb
from idlegrid.scheduler.recording import RECORDS_IN_FLIGHT_MAX, UsageRecorder
from idlegrid.scheduler.requests import check
from idlegrid.scheduler.triton import TritonPool
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

log = structlog.get_logger("scheduler.jobs")

HOLD_MARGIN_S = 60  # the hold outlives the job's deadline by this much
SYNC_WAIT_S = 3.0
LEDGER_TIMEOUT_S = 10.0


class Jobs:
    def __init__(self, table: NodeTable, triton: TritonPool, ledger, metering, *,
                 records_in_flight_max: int = RECORDS_IN_FLIGHT_MAX, known_metadata=None,
                 registry=None, spot_checks=None) -> None:
        """``registry``: the RegistryServiceStub (scheduler's token) that hears
        of token-count disagreements; None: they are only logged.
        ``spot_checks``: the SpotChecker offered each completed job once its
        usage is recorded; None: no spot checks."""
        self._table = table
        self._ledger = ledger  # LedgerServiceStub carrying the service token
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
        self._recorder.admit()
        try:
            await self._reserve(job)
        except BaseException:
            self._recorder.release()  # nothing reserved: nothing to record
            raise
        out = Outcome()
        try:
            async with asyncio.timeout(job.timeout_s):
                await self._dispatcher.run(job, out, emit)
        except TimeoutError:
            self._bill(job, out)
            raise DeadlineExceeded(f"the job ran past {int(job.timeout_s * 1000)} ms") from None
        except BaseException:  # the client left (cancelled), or an error: bill what was delivered
            self._bill(job, out)
            raise
        usage = self._bill(job, out)
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

    async def _reserve(self, job: planning.Job) -> None:
        req, amount = job.request, job.hold_micros
        try:
            r = await self._ledger.Reserve(lpb.ReserveRequest(
                job_id=req.job_id, consumer_account_id=req.consumer_account_id, amount=amount,
                timeout_s=int(job.timeout_s) + HOLD_MARGIN_S), timeout=LEDGER_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            err = from_rpc_error(e)
            if isinstance(err, NotFound):
                raise NotFound("unknown consumer account", reason="account_not_found") from None
            raise err from None
        if r.status == lpb.OPERATION_STATUS_OK:
            return
        if r.status == lpb.OPERATION_STATUS_INSUFFICIENT_FUNDS:
            raise InsufficientFunds(f"not enough credits: this job may cost up to {amount} micro-credits")
        if r.status in (lpb.OPERATION_STATUS_ALREADY_APPLIED, lpb.OPERATION_STATUS_CONFLICT,
                        lpb.OPERATION_STATUS_HOLD_ALREADY_RESOLVED):
            raise AlreadyExists("this job id was used before", reason="job_exists")
        raise IdlegridError(f"reservation refused: {lpb.OperationStatus.Name(r.status)}")

    def _bill(self, job: planning.Job, out: Outcome) -> spb.Usage:
        """Counts the usage now and hands its record to the recorder (written
        in the background, retried). Called exactly once per reserved job."""
        try:
            counter = counting.counter_for(out.choice.model) if job.llm and billing.billable(out) else None
            usage = billing.bill(job, out, counter=counter)
            record = billing.record_pb(job, usage, finished_ns=time.time_ns(),
                                       duration_ms=int((time.monotonic() - job.t0_s) * 1000))
        except BaseException:
            self._recorder.release()  # a bug; the hold expires on its own
            raise
        if usage.mismatch is not None:
            info = out.choice.info
            info.mismatches += 1
            log.warning("job.token_mismatch", node_id=info.node_id.hex(), platform=usage.mismatch,
                        node=(out.node_in, out.node_out))
            if self.reporter is not None:
                self.reporter.report(node_id=info.node_id, job_id=job.request.job_id, platform=usage.mismatch,
                                     node=(out.node_in, out.node_out))
        self._recorder.record(record, job=job, out=out)
        return billing.usage_pb(usage)
