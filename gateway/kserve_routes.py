"""KServe v2 passthrough for any Triton model, metered per request:

| route | key | |
|---|---|---|
| GET /v2, /v2/health/live, /v2/health/ready | none | server metadata and health |
| GET /v2/models/{name}[/versions/{v}] | any | model metadata, from a READY node's Triton (through the scheduler) |
| GET /v2/models/{name}[/versions/{v}]/ready | any | whether a READY node serves it |
| POST /v2/models/{name}[/versions/{v}]/infer | consumer | one scheduler job (JSON or binary tensors) |

Errors use KServe's body ``{"error": "<message>"}``. An infer call takes the
partner's price ceiling and placement as OpenRouter's ``provider`` object, the
JSON of the ``X-Idlegrid-Provider`` header (provider_prefs.py).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idlegrid.common.node_view import NodeInfo
from idlegrid.gateway import bodies, catalog, provider_prefs
from idlegrid.gateway.context import caller, gw, metadata
from idlegrid.gateway.errors import ApiError, rpc
from idlegrid.gateway.job_ids import job_id, job_uuid
from idlegrid.gateway.kserve_codec import HEADER_LENGTH, decode_request, encode_response
from idlegrid.gateway.middleware import note
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

JOB_MARGIN_S = 5.0
METADATA_MARGIN_S = 1.0  # the scheduler answers node_unavailable before the call's deadline
SERVER_NAME = "idlegrid"
SERVER_VERSION = "0.1.0"


def _offers(request: Request) -> list[tuple[NodeInfo, object]]:
    name = request.path_params["model"]
    version = request.path_params.get("version", "")
    offers = catalog.serving(gw(request).backends.nodes, name)
    if version:
        offers = [(i, m) for i, m in offers if m.offer.version in ("", version)]
    if not offers:
        raise ApiError(404, f"no ready node serves model {name!r}" + (f" version {version}" if version else ""),
                       code="model_not_found")
    return offers


async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]})


async def live(request: Request) -> Response:
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    return Response(status_code=200 if gw(request).backends.nodes.synced.is_set() else 503)


async def model_ready(request: Request) -> Response:
    await caller(request, "consumer", "provider", "admin")
    await catalog.synced(gw(request).backends.nodes)
    _offers(request)
    return Response(status_code=200)


async def model_metadata(request: Request) -> Response:
    await caller(request, "consumer", "provider", "admin")
    g = gw(request)
    await catalog.synced(g.backends.nodes)
    _offers(request)  # 404 when no ready node serves it, as for /ready
    req = spb.GetModelMetadataRequest(model=request.path_params["model"],
                                      version=request.path_params.get("version", ""),
                                      timeout_ms=g.settings.rpc_timeout_ms)
    meta = await rpc(g.backends.scheduler.GetModelMetadata(req, timeout=g.rpc_timeout_s + METADATA_MARGIN_S,
                                                           metadata=metadata(request)))
    return JSONResponse({"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
                         "inputs": [_tensor(t) for t in meta.inputs], "outputs": [_tensor(t) for t in meta.outputs]})


def _tensor(t: spb.TensorMetadata) -> dict:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}


async def infer(request: Request) -> Response:
    rec = await caller(request, "consumer")
    g = gw(request)
    name = request.path_params["model"]
    version = request.path_params.get("version", "")
    raw = await bodies.read(request, g.settings.body_bytes_max)
    body = decode_request(raw, request.headers.get(HEADER_LENGTH))
    provider = provider_prefs.from_header(request.headers.get(provider_prefs.HEADER))
    if version:
        await catalog.synced(g.backends.nodes)
        _offers(request)
    job = job_id(request, rec.account_id)
    job_text = job_uuid(job)
    note(request.scope, job_id=job_text, model=name)
    req = spb.InferRequest(job_id=job, consumer_account_id=rec.account_id, model=name,
                           tensors=spb.TensorInput(inputs=body.inputs, outputs=body.outputs),
                           timeout_ms=g.settings.job_timeout_ms)
    if provider is not None:
        req.provider.CopyFrom(provider)
    resp = await rpc(g.backends.scheduler.Infer(req, timeout=g.settings.job_timeout_s + JOB_MARGIN_S,
                                                metadata=metadata(request)))
    cost, node = resp.usage.cost_micros, resp.routing.node_id.hex()
    note(request.scope, cost_micros=cost, node=node)
    content, header_length = encode_response(name, version, body, list(resp.outputs))
    headers = {"x-idlegrid-job-id": job_text, "x-idlegrid-cost-micros": str(cost)}
    if node:
        headers["x-idlegrid-node"] = node
    if header_length is None:
        return Response(content, media_type="application/json", headers=headers)
    headers["Inference-Header-Content-Length"] = str(header_length)
    return Response(content, media_type="application/octet-stream", headers=headers)


def routes() -> list[Route]:
    # No two paths here overlap, so the order only sets how many patterns a
    # request is matched against: inference, the hot path, first.
    return [
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{model}", model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
    ]
