"""The life of one job: route, reserve the maximum cost, dispatch (with
bounded retries on other nodes while nothing was delivered), count the usage
with the platform's tokenizer, and record it in metering, which settles it on
the ledger exactly once.

| what happened | consumer pays | provider earns |
|---|---|---|
| completed | tokens (or the request) at the node's price | cost - fee |
| stream broke midway, client left, deadline | the delivered tokens only | their cost - fee |
| no output from any attempt | nothing (the hold is released) | nothing |
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    IdlegridError,
    InsufficientFunds,
    InvalidArgument,
    NotFound,
    Unavailable,
    from_rpc_error,
)
from idlegrid.common.node_view import NodeTable
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler import counting, pricing, routing
from idlegrid.scheduler.requests import check
from idlegrid.scheduler.triton import NodeError, TritonPool
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

log = structlog.get_logger("scheduler.jobs")

ATTEMPTS_MAX = 3
HOLD_MARGIN_S = 60
SYNC_WAIT_S = 3.0
RECORD_TRIES = 8
DEFAULT_MAX_TOKENS = 256
LEDGER_TIMEOUT_S = 10.0
RECORDS_IN_FLIGHT_MAX = 10_000

Emit = Callable[[spb.InferChunk], Awaitable[None]]


@dataclass(slots=True)
class Outcome:
    """What one job delivered, for billing."""

    choice: routing.Choice | None = None
    attempt: int = 0
    text: list[str] = field(default_factory=list)
    outputs: list[spb.Tensor] = field(default_factory=list)
    node_in: int = 0
    node_out: int = 0
    finish_reason: str = ""
    prompt_counter: counting.Counter | None = None  # the tokenizer that counted prompt_tokens
    prompt_tokens: int = 0
    delivered: bool = False  # the consumer received output
    complete: bool = False


def _now_ts() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class Jobs:
    def __init__(self, table: NodeTable, triton: TritonPool, ledger, metering) -> None:
        self._table = table
        self._triton = triton
        self._ledger = ledger
        self._metering = metering
        self._background: set[asyncio.Task] = set()

    # -- entry points --------------------------------------------------------

    async def run(self, req: spb.InferRequest, emit: Emit | None = None) -> spb.InferResponse:
        """Runs one job. With ``emit``, streams InferChunks as they come."""
        check(req)
        started = _now_ts()
        t0 = time.monotonic()
        plan = await self._plan(req)
        llm = plan[0].model.offer.kind == rpb.MODEL_KIND_LLM
        text_in = counting.text_input(req.text.prompt, [(m.role, m.content) for m in req.text.messages]) if llm else ""
        max_tokens = req.text.max_tokens or DEFAULT_MAX_TOKENS
        # Count the prompt once, with the platform's tokenizer where it has one;
        # billing reuses the count when the job runs on the same weights.
        counter = counting.counter_for(plan[0].model) if llm else None
        # Without a tokenizer, an upper bound: a token is at least a byte.
        prompt_est = counter.prompt(text_in) if counter else (len(text_in.encode()) + 32 if llm else 0)
        out = Outcome(prompt_counter=counter, prompt_tokens=prompt_est if counter else 0)
        if llm:
            for c in plan:
                ctx = c.model.offer.context_length
                if ctx and prompt_est + max_tokens > ctx:
                    raise InvalidArgument(
                        f"prompt ({prompt_est} tokens) plus max_tokens ({max_tokens}) exceeds the "
                        f"model's context length ({ctx})", reason="context_length_exceeded")
        hold = max(1, max(
            pricing.llm_cost(c.model.offer.price, prompt_est, max_tokens) if llm else pricing.request_cost(c.model.offer.price)
            for c in plan))
        timeout_s = (req.timeout_ms or 120_000) / 1000
        await self._reserve(req, hold, int(timeout_s) + HOLD_MARGIN_S)
        try:
            async with asyncio.timeout(timeout_s):
                await self._dispatch(req, plan, llm, text_in, max_tokens, out, emit)
        except TimeoutError:
            self._bill(req, llm, text_in, max_tokens, hold, out, started, t0)
            raise DeadlineExceeded(f"the job ran past {int(timeout_s * 1000)} ms") from None
        except BaseException:  # the client left (cancelled), or an error: bill what was delivered
            self._bill(req, llm, text_in, max_tokens, hold, out, started, t0)
            raise
        usage = self._bill(req, llm, text_in, max_tokens, hold, out, started, t0)
        if not out.delivered and not out.complete:
            raise Unavailable("every node attempt failed before producing output; nothing was charged")
        routing_pb = self._routing(out)
        if emit is not None:
            await emit(spb.InferChunk(final=spb.Final(finish_reason=out.finish_reason, usage=usage)))
        return spb.InferResponse(job_id=req.job_id, text="".join(out.text), finish_reason=out.finish_reason,
                                 outputs=out.outputs, usage=usage, routing=routing_pb)

    # -- steps ---------------------------------------------------------------

    async def _plan(self, req: spb.InferRequest) -> list[routing.Choice]:
        if not self._table.synced.is_set():
            try:
                await asyncio.wait_for(self._table.synced.wait(), SYNC_WAIT_S)
            except TimeoutError:
                raise Unavailable("the scheduler has not yet synced with the registry") from None
        if not self._table.knows_model(req.model):
            raise NotFound(f"no node serves model {req.model!r}", reason="model_not_found")
        cands = routing.candidates(self._table, req.model, req.constraints)
        if not cands:
            raise Unavailable(f"no ready node for model {req.model!r} within the constraints", reason="no_node")
        want_llm = req.WhichOneof("input") == "text"
        if (cands[0][1].offer.kind == rpb.MODEL_KIND_LLM) != want_llm:
            raise InvalidArgument(
                f"model {req.model!r} takes {'text' if not want_llm else 'tensors'}, not "
                f"{'text' if want_llm else 'tensors'}")
        plan: list[routing.Choice] = []
        pool = list(cands)
        while pool and len(plan) < ATTEMPTS_MAX:
            c = routing.choose(pool)
            plan.append(routing.Choice(c.info, c.model, c.reason, len(cands)))
            pool = [x for x in pool if x[0] is not c.info]
        return plan

    async def _reserve(self, req: spb.InferRequest, amount: int, timeout_s: int) -> None:
        try:
            r = await self._ledger.Reserve(lpb.ReserveRequest(
                job_id=req.job_id, consumer_account_id=req.consumer_account_id, amount=amount,
                timeout_s=timeout_s), timeout=LEDGER_TIMEOUT_S)
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

    async def _dispatch(self, req, plan, llm, text_in, max_tokens, out: Outcome, emit: Emit | None) -> None:
        last_error = "no attempt"
        for attempt, choice in enumerate(plan, 1):
            info = choice.info
            out.choice, out.attempt = choice, attempt
            info.in_flight += 1
            t = time.monotonic()
            try:
                if llm:
                    await self._generate(req, choice, text_in, max_tokens, out, emit)
                else:
                    out.outputs = await self._triton.infer(
                        info.node.endpoint, req.model, choice.model.offer.version, req.tensors,
                        request_id=req.job_id.hex(), timeout_s=(req.timeout_ms or 120_000) / 1000)
                    out.delivered = out.complete = True
                    if emit is not None:
                        await emit(spb.InferChunk(routing=self._routing(out)))
            except NodeError as e:
                NodeTable.failed_once(info)
                last_error = str(e)
                log.warning("job.node_failed", node_id=info.node_id.hex(), attempt=attempt, error=last_error,
                            delivered=out.delivered)
                if out.delivered:
                    return  # a stream broke midway: bill what was delivered
                continue
            finally:
                info.in_flight -= 1
            NodeTable.succeeded(info, (time.monotonic() - t) * 1000)
            return
        log.warning("job.all_attempts_failed", attempts=len(plan), error=last_error)

    async def _generate(self, req, choice, text_in, max_tokens, out: Outcome, emit: Emit | None) -> None:
        t = req.text
        params: dict = {"max_tokens": max_tokens}
        if t.HasField("temperature"):
            params["temperature"] = t.temperature
        if t.HasField("top_p"):
            params["top_p"] = t.top_p
        if t.HasField("seed"):
            params["seed"] = t.seed
        if t.stop:
            params["stop"] = list(t.stop)
        async for piece in self._triton.generate(
                choice.info.node.endpoint, req.model, choice.model.offer.version, text_in, params,
                stream=emit is not None, request_id=req.job_id.hex(),
                timeout_s=(req.timeout_ms or 120_000) / 1000):
            if not out.delivered and emit is not None:
                await emit(spb.InferChunk(routing=self._routing(out)))
            out.node_in = piece.input_tokens or out.node_in
            out.node_out += piece.output_tokens
            if piece.text:
                out.text.append(piece.text)
                out.delivered = True
                if emit is not None:
                    await emit(spb.InferChunk(text=piece.text))
            if piece.finish_reason:
                out.finish_reason = piece.finish_reason
        out.complete = True
        out.finish_reason = out.finish_reason or "stop"

    @staticmethod
    def _routing(out: Outcome) -> spb.Routing:
        c = out.choice
        if c is None:
            return spb.Routing()
        return spb.Routing(node_id=c.info.node_id, provider_id=c.info.node.provider_id, reason=c.reason,
                           attempt=out.attempt, candidates=c.candidates)

    # -- billing -------------------------------------------------------------

    def _bill(self, *args) -> spb.Usage:
        """Counts the usage now and records it in metering in the background
        (retried; the reservation's timeout is the backstop: an unrecorded job
        is never charged). Off the response path: a record costs a durable
        write in metering, and the caller need not wait for it."""
        usage, record = self._usage(*args)
        if len(self._background) >= RECORDS_IN_FLIGHT_MAX:
            log.error("job.record_backlog", in_flight=len(self._background))
        task = asyncio.get_running_loop().create_task(self._record(record))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return usage

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Waits for usage records still being written (graceful stop, tests)."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout_s)

    def _usage(self, req, llm, text_in, max_tokens, hold, out: Outcome, started, t0) -> tuple[spb.Usage, mpb.UsageRecord]:
        usage = spb.Usage()
        choice = out.choice
        record = mpb.UsageRecord(
            job_id=req.job_id, consumer_account_id=req.consumer_account_id, model=req.model,
            started_at=started, duration_ms=int((time.monotonic() - t0) * 1000))
        if choice is not None and (out.delivered or out.complete):  # an empty completion still read the prompt
            info, offer = choice.info, choice.model.offer
            record.provider_account_id = info.node.provider_account_id
            record.provider_id = info.node.provider_id.hex()
            record.node_id = info.node_id.hex()
            if llm:
                counter = counting.counter_for(choice.model)
                text = "".join(out.text)
                if counter is not None:
                    prompt_tokens = out.prompt_tokens if counter is out.prompt_counter else counter.prompt(text_in)
                    completion = counter.text(text)
                    usage.tokens_verified = True
                    if counting.disagrees(prompt_tokens, out.node_in) or counting.disagrees(completion, out.node_out):
                        info.mismatches += 1
                        log.warning("job.token_mismatch", node_id=info.node_id.hex(), platform=(prompt_tokens, completion),
                                    node=(out.node_in, out.node_out))
                else:
                    prompt_tokens, completion = out.node_in, out.node_out
                completion = min(completion, max_tokens)
                usage.prompt_tokens, usage.completion_tokens = prompt_tokens, completion
                cost = pricing.llm_cost(offer.price, prompt_tokens, completion)
                record.price_input_per_mtok = offer.price.per_million_input_tokens
                record.price_output_per_mtok = offer.price.per_million_output_tokens
            else:
                usage.requests = record.requests = 1
                cost = pricing.request_cost(offer.price)
                record.price_per_request = offer.price.per_request
            usage.cost_micros = min(cost, hold)
            record.prompt_tokens, record.completion_tokens = usage.prompt_tokens, usage.completion_tokens
            record.node_prompt_tokens, record.node_completion_tokens = out.node_in, out.node_out
            record.cost_micros = usage.cost_micros
            record.outcome = mpb.OUTCOME_COMPLETED if out.complete else mpb.OUTCOME_PARTIAL
        else:
            record.outcome = mpb.OUTCOME_FAILED
        record.finished_at.GetCurrentTime()
        return usage, record

    async def _record(self, record: mpb.UsageRecord) -> None:
        """Durably records the usage (metering settles it). Retried: the call is idempotent."""
        delay = 0.1
        for attempt in range(RECORD_TRIES):
            try:
                await self._metering.RecordUsage(mpb.RecordUsageRequest(record=record), timeout=LEDGER_TIMEOUT_S)
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
