"""Dispatch: runs a planned job on its nodes, in the plan's order.

A node that fails before delivering anything is marked failed (three in a row
quarantine it) and the next node in the plan is tried; once output reached
the caller there is no retry (the caller already has part of one answer), and
the job ends as a partial one. What was delivered is gathered in an
``Outcome``, which billing reads, whatever way the job ended: completed,
broken midway, cancelled by the client or past its deadline.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from idlegrid.common.node_view import NodeTable
from idlegrid.scheduler import bounds, routing
from idlegrid.scheduler.planning import Job
from idlegrid.scheduler.triton import NodeError, TritonPool
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

log = structlog.get_logger("scheduler.dispatch")

Emit = Callable[[spb.InferChunk], Awaitable[None]]
# The metadata already fetched for a choice's model at a version (no call), or None
KnownMetadata = Callable[[routing.Choice, str], spb.ModelMetadata | None]


@dataclass(slots=True)
class Outcome:
    """What one job delivered so far (filled in while it runs)."""

    choice: routing.Choice | None = None  # the node of the last attempt
    attempt: int = 0
    text: list[str] = field(default_factory=list)
    outputs: list[spb.Tensor] = field(default_factory=list)
    node_in: int = 0  # the node's count of prompt tokens
    node_out: int = 0  # the node's count of generated tokens
    finish_reason: str = ""
    delivered: bool = False  # the consumer received output
    complete: bool = False


def routing_pb(out: Outcome) -> spb.Routing:
    c = out.choice
    if c is None:
        return spb.Routing()
    return spb.Routing(node_id=c.info.node_id, provider_id=c.info.node.provider_id, reason=c.reason,
                       attempt=out.attempt, candidates=c.candidates)


def sampling_parameters(job: Job) -> dict:
    """The ``sampling_parameters`` of the vLLM backend's convention: only what the caller set."""
    t = job.request.text
    params: dict = {"max_tokens": job.max_tokens}
    if t.HasField("temperature"):
        params["temperature"] = t.temperature
    if t.HasField("top_p"):
        params["top_p"] = t.top_p
    if t.HasField("seed"):
        params["seed"] = t.seed
    if t.stop:
        params["stop"] = list(t.stop)
    return params


class Dispatcher:
    """``known_metadata``: the outputs' metadata already fetched for a node's
    model, which bounds what a tensor job may send back (bounds.py)."""

    def __init__(self, triton: TritonPool, *, known_metadata: KnownMetadata | None = None) -> None:
        self._triton = triton
        self._known_metadata = known_metadata

    async def run(self, job: Job, out: Outcome, emit: Emit | None) -> None:
        """Tries the plan's nodes in order until one answers; with ``emit``,
        streams InferChunks (routing first, then text) as they come."""
        last_error = "no attempt"
        for attempt, choice in enumerate(job.plan, 1):
            info = choice.info
            out.choice, out.attempt = choice, attempt
            info.in_flight += 1
            t = time.monotonic()
            try:
                if job.llm:
                    await self._generate(job, choice, out, emit)
                else:
                    await self._infer(job, choice, out, emit)
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
        log.warning("job.all_attempts_failed", attempts=len(job.plan), error=last_error)

    async def _infer(self, job: Job, choice: routing.Choice, out: Outcome, emit: Emit | None) -> None:
        req = job.request
        version = choice.model.offer.version
        meta = self._known_metadata(choice, version) if self._known_metadata is not None else None
        out.outputs = await self._triton.infer(
            choice.info.node, req.model, version, req.tensors, request_id=req.job_id.hex(),
            timeout_s=job.timeout_s, bound=bounds.for_tensors(meta, list(req.tensors.outputs)))
        out.delivered = out.complete = True
        if emit is not None:
            await emit(spb.InferChunk(routing=routing_pb(out)))

    async def _generate(self, job: Job, choice: routing.Choice, out: Outcome, emit: Emit | None) -> None:
        req = job.request
        bound = bounds.for_llm(job.max_tokens)
        texts = 0
        async with contextlib.aclosing(self._triton.generate(
                choice.info.node, req.model, choice.model.offer.version, job.text_input,
                sampling_parameters(job), stream=emit is not None, request_id=req.job_id.hex(),
                timeout_s=job.timeout_s, bound=bound)) as pieces:
            async for piece in pieces:
                if piece.text:
                    texts += 1
                    if bound.texts_max is not None and texts > bound.texts_max:
                        raise NodeError(f"cut off: the node sent more than {bound.texts_max} pieces of text "
                                        "(max_tokens)")
                await self._deliver(piece, out, emit)
        out.complete = True
        out.finish_reason = out.finish_reason or "stop"

    async def _deliver(self, piece, out: Outcome, emit: Emit | None) -> None:
        if not out.delivered and emit is not None:
            await emit(spb.InferChunk(routing=routing_pb(out)))
        out.node_in = piece.input_tokens or out.node_in
        out.node_out += piece.output_tokens
        if piece.text:
            out.text.append(piece.text)
            out.delivered = True
            if emit is not None:
                await emit(spb.InferChunk(text=piece.text))
        if piece.finish_reason:
            out.finish_reason = piece.finish_reason
