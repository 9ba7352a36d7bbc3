"""KServe v2 model metadata (tensor names, datatypes and shapes), for the
gateway's ``GET /v2/models/{name}``.

The registry keeps each model's kind and prices, not its tensors, so the
metadata is asked of a READY node's Triton. It is asked from here, through
the scheduler's own client pool, because the scheduler is the one part of
the marketplace that talks to nodes (soon only through the relay).

An answer is cached per (node, node revision, model, version) for ``ttl_s``:
a node that re-registers (new revision) is asked again. The cache holds at
most ``entries_max`` answers; the oldest goes first.
"""

from __future__ import annotations

import asyncio
import time

from tritonclient.utils import InferenceServerException

from idlegrid.common.errors import InvalidArgument, NotFound, Unavailable
from idlegrid.common.node_view import NodeInfo, NodeTable
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler.triton import NodeError, TritonPool
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

TTL_S = 30.0
ENTRIES_MAX = 1024
SYNC_WAIT_S = 3.0
MODEL_CHARS_MAX = 128
VERSION_CHARS_MAX = 128
TIMEOUT_MS_DEFAULT = 10_000
TIMEOUT_MS_MAX = 600_000


def check(req: spb.GetModelMetadataRequest) -> None:
    """The request's limits (documented in scheduler.proto)."""
    if not 1 <= len(req.model) <= MODEL_CHARS_MAX:
        raise InvalidArgument(f"model must be 1..{MODEL_CHARS_MAX} characters")
    if len(req.version) > VERSION_CHARS_MAX:
        raise InvalidArgument(f"version must be at most {VERSION_CHARS_MAX} characters")
    if req.timeout_ms > TIMEOUT_MS_MAX:
        raise InvalidArgument(f"timeout_ms must be at most {TIMEOUT_MS_MAX}")


def serving(table: NodeTable, model: str, version: str) -> list[tuple[NodeInfo, rpb.Model]]:
    """READY nodes with ``model`` verified that offer ``version`` when one is
    asked (an offer without a version serves whichever the node has)."""
    out = []
    for info in table.serving(model):
        m = info.models.get(model)
        if m is None or info.node.state != rpb.NODE_STATE_READY:
            continue
        if version and m.offer.version not in ("", version):
            continue
        out.append((info, m))
    return out


def _tensor(t) -> spb.TensorMetadata:
    return spb.TensorMetadata(name=t.name, datatype=t.datatype, shape=[int(d) for d in t.shape])


class MetadataFetcher:
    """Fetches and caches model metadata from the nodes in ``table``."""

    def __init__(self, table: NodeTable, triton: TritonPool, *, ttl_s: float = TTL_S,
                 entries_max: int = ENTRIES_MAX) -> None:
        assert ttl_s >= 0 and entries_max >= 1
        self._table = table
        self._triton = triton
        self._ttl_s = ttl_s
        self._entries_max = entries_max
        self._items: dict[tuple[bytes, int, str, str], tuple[float, spb.ModelMetadata]] = {}

    async def get(self, req: spb.GetModelMetadataRequest) -> spb.ModelMetadata:
        check(req)
        await self._synced()
        offers = serving(self._table, req.model, req.version)
        if not offers:
            raise NotFound(f"no ready node serves model {req.model!r}"
                           + (f" version {req.version}" if req.version else ""), reason="model_not_found")
        preferred = [o for o in offers if o[0].available(time.monotonic())] or offers
        info, model = preferred[0]
        version = req.version or model.offer.version
        key = (info.node_id, info.node.revision, req.model, version)
        hit = self._items.get(key)
        if hit is not None and time.monotonic() - hit[0] <= self._ttl_s:
            return hit[1]
        timeout_s = (req.timeout_ms or TIMEOUT_MS_DEFAULT) / 1000
        try:
            client, headers = self._triton.route(info.node)
            meta = await client.get_model_metadata(req.model, version, headers=headers,
                                                   client_timeout=timeout_s)
        except (InferenceServerException, NodeError):
            raise Unavailable(f"the node serving {req.model!r} did not answer with its metadata; try again",
                              reason="node_unavailable") from None
        answer = spb.ModelMetadata(name=meta.name, versions=list(meta.versions), platform=meta.platform,
                                   inputs=[_tensor(t) for t in meta.inputs],
                                   outputs=[_tensor(t) for t in meta.outputs])
        self._items.pop(key, None)
        while len(self._items) >= self._entries_max:
            del self._items[next(iter(self._items))]  # the oldest answer
        self._items[key] = (time.monotonic(), answer)
        return answer

    def known(self, info: NodeInfo, model: str, version: str) -> spb.ModelMetadata | None:
        """The answer already cached for ``info``'s model (no call, any age:
        a node's tensors change only with its revision)."""
        hit = self._items.get((info.node_id, info.node.revision, model, version))
        return hit[1] if hit is not None else None

    async def _synced(self) -> None:
        if self._table.synced.is_set():
            return
        try:
            await asyncio.wait_for(self._table.synced.wait(), SYNC_WAIT_S)
        except TimeoutError:
            raise Unavailable("the scheduler has not yet synced with the registry") from None
