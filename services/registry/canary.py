"""Verification of a node before it becomes routable: the registry itself
talks to the node's Triton over gRPC and believes only what it sees.

Checks, in order, each under a deadline (the whole run under another):
1. the server is ready;
2. per advertised model: the model is ready; its metadata and config match
   the offer (a language model has a BYTES ``text_input`` and a BYTES
   ``text_output``, as Triton's vLLM backend does; the max batch size is the
   advertised one);
3. per model, the catalog's canaries (catalog.py): a language model runs
   each canary's prompt greedily (temperature 0, the canary's max_tokens)
   and must answer the catalog's expected text exactly; a tensor model runs
   each canary's KServe body and must answer its outputs within the
   catalog's tolerance (canary_io.py). The first canary's wall time is
   recorded as the model's canary latency. A model the catalog does not
   hold fails.
The first failing check ends the run; its description is the node's
state_detail.

The registry reaches the node as the marketplace does (see
idlegrid.common.node_link): through the relay that holds its link, with the
node named in the metadata, or at an operator-enabled direct endpoint; never
at an address the provider names in linked mode.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from idlegrid.common.node_link import NODE_ID_HEADER
from idlegrid.registry import canary_io
from idlegrid.registry.canary_io import Failed
from idlegrid.registry.v1 import registry_pb2 as pb
from idlegrid.registry.validate import DETAIL_CHARS_MAX


@dataclass(slots=True)
class Result:
    ok: bool
    detail: str
    # (name, version) → canary latency in µs, for the models that passed.
    latency_us: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how the canary reaches a node's Triton."""

    address: str                          # the relay holding the link, or a direct endpoint
    headers: dict[str, str] = field(default_factory=dict)   # node id and service credential for a relay
    ssl: bool = False
    root_certificates: str | None = None  # PEM file; None: the system's roots

    @property
    def label(self) -> str:
        node = self.headers.get(NODE_ID_HEADER)
        return f"node {node} via relay {self.address}" if node else f"triton at {self.address}"


Catalog = Mapping[str, pb.CatalogModel]  # model name → its catalog entry, as verification starts


class Verifier(Protocol):
    async def verify(self, target: Target, offers: Sequence[pb.ModelOffer], catalog: Catalog) -> Result: ...


def _short(text: str) -> str:
    return text if len(text) <= DETAIL_CHARS_MAX else text[:DETAIL_CHARS_MAX - 1] + "…"


def _label(o: pb.ModelOffer) -> str:
    return f"model {o.name!r}" + (f" version {o.version}" if o.version else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class TritonVerifier:
    call_timeout_s: float = 5.0
    canary_timeout_s: float = 30.0
    total_timeout_s: float = 60.0

    async def verify(self, target: Target, offers: Sequence[pb.ModelOffer], catalog: Catalog) -> Result:
        result = Result(ok=False, detail="")
        client = aioclient.InferenceServerClient(url=target.address, ssl=target.ssl,
                                                 root_certificates=target.root_certificates)
        h = target.headers or None
        try:
            async with asyncio.timeout(self.total_timeout_s):
                await self._server(client, target.label, h)
                for o in offers:
                    result.latency_us[(o.name, o.version)] = await self._model(client, o, catalog.get(o.name), h)
            result.ok = True
            result.detail = f"{len(offers)} model(s) verified"
        except Failed as e:
            result.detail = _short(str(e))
        except TimeoutError:
            result.detail = f"verification of {target.label} took longer than {self.total_timeout_s:g} s"
        finally:
            await client.close()
        if not result.ok:
            result.latency_us.clear()
        return result

    async def _call(self, what: str, coro):
        try:
            return await coro
        except InferenceServerException as e:
            raise Failed(f"{what}: {e.status() or 'error'}: {e.message()}") from None
        except TimeoutError:
            raise Failed(f"{what}: no answer within {self.call_timeout_s:g} s") from None

    async def _server(self, client, label: str, h) -> None:
        ready = await self._call(f"{label} is not reachable",
                                 client.is_server_ready(headers=h, client_timeout=self.call_timeout_s))
        if not ready:
            raise Failed(f"{label} is not ready")

    async def _model(self, client, o: pb.ModelOffer, entry: pb.CatalogModel | None, h) -> int:
        """The model's checks, then each of its catalog canaries: the latency of the first."""
        label, t = _label(o), self.call_timeout_s
        if entry is None:
            raise Failed(f"{label} is not in the marketplace's catalog")
        ready = await self._call(f"{label} readiness",
                                 client.is_model_ready(o.name, o.version, headers=h, client_timeout=t))
        if not ready:
            raise Failed(f"{label} is not ready on the node's Triton")
        meta = await self._call(f"{label} metadata",
                                client.get_model_metadata(o.name, o.version, headers=h, client_timeout=t))
        cfg = (await self._call(f"{label} config",
                                client.get_model_config(o.name, o.version, headers=h, client_timeout=t))).config
        inputs = {i.name: i for i in meta.inputs}
        outputs = {i.name: i for i in meta.outputs}
        if cfg.max_batch_size != o.max_batch_size:
            raise Failed(f"{label}: advertised max_batch_size {o.max_batch_size}, Triton has {cfg.max_batch_size}")
        if o.kind == pb.MODEL_KIND_LLM:
            for name, table in (("text_input", inputs), ("text_output", outputs)):
                if name not in table or table[name].datatype != "BYTES":
                    raise Failed(f"{label} is advertised as a language model but has no BYTES {name!r} "
                                 "(the tensor conventions of Triton's vLLM backend)")
        elif not inputs or not outputs:
            raise Failed(f"{label} has no inputs or no outputs")
        optional = {i.name for i in cfg.input if i.optional}
        latencies = []
        for i, c in enumerate(entry.canaries):
            what = f"{label} canary {i + 1} of {len(entry.canaries)}"
            request = canary_io.inputs(o.kind, meta, optional, c)
            start = time.perf_counter()
            got = await self._infer(client, o, request, cfg.model_transaction_policy.decoupled, what, h)
            latencies.append(int((time.perf_counter() - start) * 1e6))
            if not got:
                raise Failed(f"{what} returned no outputs")
            if got.keys() - outputs.keys():
                raise Failed(f"{what} returned outputs its metadata does not list: {sorted(got.keys() - outputs.keys())}")
            why = canary_io.mismatch(o.kind, c, got)
            if why is not None:
                raise Failed(f"{what} does not match the catalog's reference: {why}")
        return latencies[0]

    async def _infer(self, client, o: pb.ModelOffer, request, decoupled: bool, what: str, h) -> dict:
        """The canary's outputs (name → array)."""
        if decoupled:
            res = await self._stream(client, o, request, what, h)
        else:
            res = await self._call(f"{what} inference", client.infer(
                o.name, request, model_version=o.version, headers=h, client_timeout=self.canary_timeout_s))
        return {out.name: res.as_numpy(out.name) for out in res.get_response().outputs}

    async def _stream(self, client, o: pb.ModelOffer, request, what: str, h):
        """One request on a decoupled model, read to its first response that
        carries outputs (a language model in non-streaming mode sends exactly
        one); the stream is then closed."""
        done = asyncio.Event()

        async def requests():
            yield {"model_name": o.name, "model_version": o.version, "inputs": request}
            await done.wait()  # keep the stream open until the answer

        responses = client.stream_infer(requests(), stream_timeout=self.canary_timeout_s, headers=h)
        try:
            async with asyncio.timeout(self.canary_timeout_s):
                async for result, error in responses:
                    if error is not None:
                        raise Failed(f"{what} inference: {error.message()}")
                    if result.get_response().outputs:
                        return result
                raise Failed(f"{what} inference: the stream ended without a response")
        except TimeoutError:
            raise Failed(f"{what} inference: no response within {self.canary_timeout_s:g} s") from None
        except InferenceServerException as e:
            raise Failed(f"{what} inference: {e.message()}") from None
        finally:
            done.set()
            responses.cancel()


@dataclass(frozen=True, slots=True)
class SkipVerifier:
    """Benchmarks and tests only (registry setting skip_verification): trusts
    every offer without contacting the node."""

    async def verify(self, target: Target, offers: Sequence[pb.ModelOffer], catalog: Catalog) -> Result:
        return Result(ok=True, detail="verification skipped (registry setting skip_verification)",
                      latency_us={})
