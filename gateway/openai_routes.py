"""OpenAI-compatible routes: GET /v1/models, POST /v1/chat/completions,
POST /v1/completions (with and without ``stream``), POST /v1/embeddings.

Each inference is one scheduler job paid by the key's consumer account.
Responses carry ``x-idlegrid-job-id``, ``x-idlegrid-node`` and (when not
streamed) ``x-idlegrid-cost-micros``; a stream's cost is in its last chunk.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idlegrid.gateway import bodies, catalog
from idlegrid.gateway.context import caller, gw, metadata
from idlegrid.gateway.errors import ApiError, from_rpc, rpc
from idlegrid.gateway.job_ids import job_id, job_uuid
from idlegrid.gateway.middleware import note
from idlegrid.gateway.openai_schema import TextRequest, chat, completion
from idlegrid.gateway.openai_shapes import Chunks, chat_completion, text_completion
from idlegrid.gateway.sse import DONE, EventStream, frame
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

JOB_MARGIN_S = 5.0  # the scheduler's own deadline fires first


async def list_models(request: Request) -> Response:
    await caller(request, "consumer", "provider", "admin")
    table = gw(request).backends.nodes
    await catalog.synced(table)
    return JSONResponse({"object": "list", "data": catalog.all_models(table)})


async def get_model(request: Request) -> Response:
    await caller(request, "consumer", "provider", "admin")
    table = gw(request).backends.nodes
    await catalog.synced(table)
    name = request.path_params["model"]
    offers = catalog.serving(table, name)
    if not offers:
        raise ApiError(404, f"no ready node serves model {name!r}", param="model", code="model_not_found")
    return JSONResponse(catalog.describe(name, offers))


async def chat_completions(request: Request) -> Response | EventStream:
    return await _text(request, is_chat=True)


async def completions(request: Request) -> Response | EventStream:
    return await _text(request, is_chat=False)


async def embeddings(request: Request) -> Response:
    await caller(request, "consumer")
    g = gw(request)
    body = await bodies.read_json(request, g.settings.body_bytes_max)
    bodies.only(body, {"model", "input", "encoding_format", "dimensions", "user"})
    model = bodies.string(body, "model", required_=True, max_len=128)
    bodies.required(body, "input")
    await catalog.synced(g.backends.nodes)
    if not catalog.serving(g.backends.nodes, model):
        raise ApiError(404, f"no ready node serves model {model!r}", param="model", code="model_not_found")
    raise ApiError(400, f"model {model!r} is not an embedding model; no node offers embeddings yet",
                   param="model", code="model_not_supported")


async def _text(request: Request, *, is_chat: bool) -> Response | EventStream:
    rec = await caller(request, "consumer")
    g = gw(request)
    body = await bodies.read_json(request, g.settings.body_bytes_max)
    parsed = chat(body) if is_chat else completion(body)
    job = job_id(request, rec.account_id)
    note(request.scope, job_id=job_uuid(job), model=parsed.model, stream=parsed.stream)
    req = spb.InferRequest(job_id=job, consumer_account_id=rec.account_id, model=parsed.model, text=parsed.text,
                           timeout_ms=g.settings.job_timeout_ms)
    if parsed.provider is not None:
        req.provider.CopyFrom(parsed.provider)
    created = int(time.time())
    cid = ("chatcmpl-" if is_chat else "cmpl-") + job.hex()
    if parsed.stream:
        return await _stream(request, req, parsed, Chunks(is_chat, cid, created, parsed.model))
    resp = await rpc(g.backends.scheduler.Infer(req, timeout=g.settings.job_timeout_s + JOB_MARGIN_S,
                                                metadata=metadata(request)))
    note(request.scope, cost_micros=resp.usage.cost_micros, node=resp.routing.node_id.hex())
    shape = chat_completion if is_chat else text_completion
    return JSONResponse(shape(cid, created, parsed.model, resp.text, resp.finish_reason, resp.usage),
                        headers=_headers(job, resp.routing.node_id, cost=resp.usage.cost_micros))


def _headers(job: bytes, node_id: bytes, *, cost: int | None = None) -> dict[str, str]:
    h = {"x-idlegrid-job-id": job_uuid(job)}
    if node_id:
        h["x-idlegrid-node"] = node_id.hex()
    if cost is not None:
        h["x-idlegrid-cost-micros"] = str(cost)
    return h


async def _stream(request: Request, req: spb.InferRequest, parsed: TextRequest, chunks: Chunks) -> EventStream:
    """Waits for the job's first message before answering, so that a refused
    job (no credits, unknown model, no node) is a plain HTTP error, not a
    broken stream."""
    g = gw(request)
    call = g.backends.scheduler.InferStream(req, timeout=g.settings.job_timeout_s + JOB_MARGIN_S,
                                            metadata=metadata(request))
    try:
        first = await rpc(call.read())
    except BaseException:
        call.cancel()
        raise
    if first is grpc.aio.EOF:
        raise ApiError(502, "the scheduler ended the job without an answer", code="upstream_error")
    node_id = first.routing.node_id if first.WhichOneof("chunk") == "routing" else b""
    if node_id:
        note(request.scope, node=node_id.hex())
    scope = request.scope
    return EventStream(_events(call, first, parsed, chunks, scope), headers=_headers(req.job_id, node_id))


async def _events(call, first: spb.InferChunk, parsed: TextRequest, chunks: Chunks, scope) -> AsyncIterator[bytes]:
    try:
        opening = chunks.start()
        if opening is not None:
            yield frame(opening)
        msg = first
        while msg is not grpc.aio.EOF:
            kind = msg.WhichOneof("chunk")
            if kind == "text":
                yield frame(chunks.text(msg.text))
            elif kind == "final":
                u = msg.final.usage
                note(scope, cost_micros=u.cost_micros)
                yield frame(chunks.final(msg.final.finish_reason, None if parsed.include_usage else u))
                if parsed.include_usage:
                    yield frame(chunks.usage_only(u))
            try:
                msg = await call.read()
            except grpc.aio.AioRpcError as e:
                err = from_rpc(e)
                note(scope, stream_error=err.code)
                yield frame(err.body())
                return
        yield DONE
    finally:
        call.cancel()  # a no-op when the job is done; otherwise the scheduler bills what was delivered


def routes() -> list[Route]:
    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]
