"""KServe model metadata, fetched from a READY node's Triton over gRPC (the
registry keeps prices and kinds, not tensor shapes) and cached briefly per
node revision."""

from __future__ import annotations

import time

from tritonclient.utils import InferenceServerException

from idlegrid.common.node_view import NodeInfo
from idlegrid.gateway.errors import ApiError
from idlegrid.scheduler.triton import TritonPool

TTL_S = 30.0
CACHE_MAX = 1024


class NodeMetadata:
    def __init__(self) -> None:
        self._triton = TritonPool()
        self._items: dict[tuple, tuple[float, dict]] = {}

    async def close(self) -> None:
        await self._triton.close()

    async def get(self, info: NodeInfo, name: str, version: str, *, timeout_s: float) -> dict:
        key = (info.node_id, info.node.revision, name, version)
        hit = self._items.get(key)
        if hit is not None and time.monotonic() - hit[0] <= TTL_S:
            return hit[1]
        try:
            meta = await self._triton.client(info.node.endpoint).get_model_metadata(
                name, version, client_timeout=timeout_s)
        except InferenceServerException:
            raise ApiError(503, f"the node serving {name!r} did not answer with its metadata; try again",
                           code="node_unavailable", headers={"Retry-After": "1"}) from None
        doc = {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
               "inputs": [_tensor(t) for t in meta.inputs], "outputs": [_tensor(t) for t in meta.outputs]}
        if len(self._items) >= CACHE_MAX:
            self._items.clear()
        self._items[key] = (time.monotonic(), doc)
        return doc


def _tensor(t) -> dict:
    return {"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]}
