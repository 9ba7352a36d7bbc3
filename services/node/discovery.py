"""What the node offers: the models its Triton serves, read from Triton
itself (repository index, metadata, config), priced by the config file."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import structlog
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from idlegrid.common.errors import ConfigError, Unavailable
from idlegrid.node.config_file import ModelPricing, NodeConfig
from idlegrid.registry.v1 import registry_pb2 as pb

log = structlog.get_logger("node.discovery")

READ_CHUNK_BYTES = 1 << 20


def looks_like_llm(meta) -> bool:
    """The tensor conventions of Triton's vLLM backend: BYTES text_input in, BYTES text_output out."""
    ins = {t.name: t.datatype for t in meta.inputs}
    outs = {t.name: t.datatype for t in meta.outputs}
    return ins.get("text_input") == "BYTES" and outs.get("text_output") == "BYTES"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(READ_CHUNK_BYTES):
                h.update(chunk)
    except OSError as e:
        raise ConfigError(f"cannot read weights_file {path}: {e}") from None
    return f"sha256:{h.hexdigest()}"


async def _offer(client, p: ModelPricing, timeout_s: float) -> pb.ModelOffer:
    if not await client.is_model_ready(p.name, p.version, client_timeout=timeout_s):
        raise ConfigError(f"model {p.name!r} is priced in the node config but not ready on Triton")
    meta = await client.get_model_metadata(p.name, p.version, client_timeout=timeout_s)
    cfg = (await client.get_model_config(p.name, p.version, client_timeout=timeout_s)).config
    kind = p.kind or ("llm" if looks_like_llm(meta) else "tensor")
    if kind == "llm" and not p.context_length:
        raise ConfigError(f"models.{p.name}.context_length is required for a language model")
    digest = p.weights_digest
    if p.weights_file is not None:
        digest = await asyncio.to_thread(file_digest, p.weights_file)
    return pb.ModelOffer(
        name=p.name, version=p.version, kind=pb.MODEL_KIND_LLM if kind == "llm" else pb.MODEL_KIND_TENSOR,
        max_batch_size=cfg.max_batch_size, context_length=p.context_length if kind == "llm" else 0,
        weights_digest=digest,
        price=pb.Price(per_million_input_tokens=p.price_per_million_input_tokens,
                       per_million_output_tokens=p.price_per_million_output_tokens,
                       per_request=p.price_per_request))


async def discover(triton_url: str, config: NodeConfig, *, timeout_s: float = 10.0) -> list[pb.ModelOffer]:
    """One offer per priced model; models Triton serves without a price are
    skipped (logged); a priced model Triton does not serve is an error."""
    client = aioclient.InferenceServerClient(url=triton_url)
    try:
        async with asyncio.timeout(timeout_s * (2 + len(config.models))):
            if not await client.is_server_ready(client_timeout=timeout_s):
                raise Unavailable(f"Triton at {triton_url} is not ready")
            index = await client.get_model_repository_index(client_timeout=timeout_s)
            served = {m.name for m in index.models if m.state == "READY"}
            unpriced = sorted(served - config.models.keys())
            if unpriced:
                log.warning("node.models_not_offered", models=unpriced, why="no price in the node config")
            return [await _offer(client, p, timeout_s) for p in config.models.values()]
    except InferenceServerException as e:
        raise Unavailable(f"cannot read the models of Triton at {triton_url}: {e.message()}") from None
    except TimeoutError:
        raise Unavailable(f"Triton at {triton_url} did not answer in time") from None
    finally:
        await client.close()
