"""The models on offer right now, from the live view of the registry: every
verified model on a READY node, with its price range and node count."""

from __future__ import annotations

import asyncio

from idlegrid.common.node_view import NodeInfo, NodeTable
from idlegrid.gateway.errors import ApiError
from idlegrid.gateway.views import MODEL_KINDS
from idlegrid.registry.v1 import registry_pb2 as rpb

SYNC_WAIT_S = 3.0


async def synced(table: NodeTable) -> None:
    """503 unless the view has its first snapshot from the registry."""
    if table.synced.is_set():
        return
    try:
        await asyncio.wait_for(table.synced.wait(), SYNC_WAIT_S)
    except TimeoutError:
        raise ApiError(503, "the gateway has not yet synced with the registry; try again", code="not_synced",
                       headers={"Retry-After": "1"}) from None


def serving(table: NodeTable, model: str) -> list[tuple[NodeInfo, rpb.Model]]:
    """READY nodes with a verified ``model``."""
    out = []
    for info in table.serving(model):
        if info.node.state == rpb.NODE_STATE_READY and model in info.models:
            out.append((info, info.models[model]))
    return out


def _range(values: list[int]) -> dict:
    return {"min": min(values), "max": max(values)}


def describe(model: str, offers: list[tuple[NodeInfo, rpb.Model]]) -> dict:
    """An OpenAI model object with idlegrid's extras: kind, nodes, prices."""
    first = offers[0][1].offer
    prices = [m.offer.price for _, m in offers]
    created = min((i.node.registered_at.seconds for i, _ in offers), default=0)
    entry = {"id": model, "object": "model", "created": created, "owned_by": "idlegrid",
             "kind": MODEL_KINDS.get(first.kind, "unknown"), "nodes": len(offers)}
    if first.kind == rpb.MODEL_KIND_LLM:
        entry["context_length"] = max(m.offer.context_length for _, m in offers)
        entry["pricing"] = {
            "unit": "micro-credits",
            "input_per_million_tokens": _range([p.per_million_input_tokens for p in prices]),
            "output_per_million_tokens": _range([p.per_million_output_tokens for p in prices]),
        }
    else:
        entry["pricing"] = {"unit": "micro-credits", "per_request": _range([p.per_request for p in prices])}
    return entry


def all_models(table: NodeTable) -> list[dict]:
    return [describe(name, offers) for name in sorted(table.by_model) if (offers := serving(table, name))]
