"""Routing: which node gets a job.

Only READY nodes that passed verification for the model, within the
caller's constraints (price caps, region, labels) and not quarantined, are
candidates. Each is scored (lower is better) by

    score = price_weight * price / cheapest_price
          + load_weight * (in_flight + queue_depth) / capacity
          + latency_weight * latency / best_latency
          + reliability_weight * (1 - reliability)

then the job goes to the better of two picked at random among the best few
(power of two choices: no herd on one node, no global coordination). A small
share of jobs goes to a node with little record, so new nodes can earn one.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from idlegrid.common.node_view import NodeInfo, NodeTable
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

BEST_FEW = 4
EXPLORE_SHARE = 0.05
NEW_NODE_JOBS = 20
PRICE_WEIGHT, LOAD_WEIGHT, LATENCY_WEIGHT, RELIABILITY_WEIGHT = 1.0, 1.0, 0.5, 2.0


@dataclass(frozen=True, slots=True)
class Choice:
    info: NodeInfo
    model: rpb.Model
    reason: str
    candidates: int


def _unit_price(model: rpb.Model, kind_llm: bool) -> int:
    p = model.offer.price
    return (p.per_million_input_tokens + p.per_million_output_tokens) if kind_llm else p.per_request


def _fits(info: NodeInfo, model: rpb.Model, c: spb.Constraints) -> bool:
    p = model.offer.price
    if c.max_price_per_million_input_tokens and p.per_million_input_tokens > c.max_price_per_million_input_tokens:
        return False
    if c.max_price_per_million_output_tokens and p.per_million_output_tokens > c.max_price_per_million_output_tokens:
        return False
    if c.max_price_per_request and p.per_request > c.max_price_per_request:
        return False
    if c.region and info.node.region != c.region:
        return False
    labels = info.node.labels
    return all(labels.get(k) == v for k, v in c.labels.items())


def candidates(table: NodeTable, model_name: str, c: spb.Constraints, *, exclude=frozenset()) -> list[tuple[NodeInfo, rpb.Model]]:
    now = time.monotonic()
    out = []
    for info in table.serving(model_name):
        if info.node_id in exclude or not info.available(now):
            continue
        m = info.models[model_name]
        if _fits(info, m, c):
            out.append((info, m))
    return out


def _scores(cands: list[tuple[NodeInfo, rpb.Model]]) -> list[tuple[float, str]]:
    llm = cands[0][1].offer.kind == rpb.MODEL_KIND_LLM
    cheapest = max(1, min(_unit_price(m, llm) for _, m in cands))
    latencies = [i.latency_ms for i, _ in cands if i.latency_ms]
    best_latency = min(latencies) if latencies else None
    out = []
    for info, m in cands:
        price = _unit_price(m, llm) / cheapest
        load = (info.in_flight + info.queue_depth) / info.capacity
        lat = (info.latency_ms / best_latency) if (best_latency and info.latency_ms) else 1.0
        rel = info.reliability()
        score = PRICE_WEIGHT * price + LOAD_WEIGHT * load + LATENCY_WEIGHT * lat + RELIABILITY_WEIGHT * (1 - rel)
        why = (f"score {score:.3f} (price x{price:.2f}, load {load:.2f}, latency x{lat:.2f}, "
               f"reliability {rel:.3f})")
        out.append((score, why))
    return out


def choose(cands: list[tuple[NodeInfo, rpb.Model]], rnd: random.Random = random._inst) -> Choice:  # type: ignore[attr-defined]
    """Picks one candidate (``cands`` must not be empty)."""
    n = len(cands)
    if n == 1:
        info, m = cands[0]
        return Choice(info, m, "the only ready node for this model within the constraints", 1)
    new = [c for c in cands if c[0].completed + c[0].failed < NEW_NODE_JOBS]
    if new and len(new) < n and rnd.random() < EXPLORE_SHARE:
        info, m = rnd.choice(new)
        return Choice(info, m, f"exploration: a new node earning its record ({info.completed} jobs so far)", n)
    scored = sorted(zip(_scores(cands), cands, strict=True), key=lambda x: x[0][0])
    best = scored[:BEST_FEW]
    a, b = rnd.sample(best, 2)
    (sa, why), (info, m) = min(a, b, key=lambda x: x[0][0])
    other = b if (a[1][0] is info) else a
    return Choice(info, m, f"power of two choices among the best {len(best)} of {n}: {why}; "
                           f"beat {other[0][0]:.3f}", n)
