"""Routing: which nodes get a job, and in what order.

Only READY nodes that passed verification for the model, within the
caller's constraints (region, labels) and provider preferences (price
ceilings, ``only``, ``ignore``; preferences.py) and not quarantined, are
candidates. Each is scored (lower is better) by

    score = price_weight * price / cheapest_price
          + load_weight * (in_flight + queue_depth) / capacity
          + latency_weight * latency / best_latency
          + reliability_weight * (1 - reliability)
          + reputation_weight * (1 - reputation)

(reliability: this scheduler's record of the node's jobs; reputation: the
registry's record of its spot checks and token-count agreement, 0..1) then the job goes to the better of two picked at random among the best few
(power of two choices: no herd on one node, no global coordination). A small
share of jobs goes to a node with little record, so new nodes can earn one,
but never to one priced above the candidates' median (the lower median of
their unit prices): exploration must not cost the partner more.

A caller's ``provider.sort`` replaces that with a plain order, best first,
ties broken by score: ``price`` the lowest unit price, ``latency`` the lowest
recent latency (the canary's before any job), ``throughput`` the most spare
capacity (capacity - in_flight - queue_depth). ``provider.order`` puts the
nodes it names first, in its order; what may follow is in :func:`plan`.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass

from idlegrid.common.node_view import NodeInfo, NodeTable
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler import preferences
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

BEST_FEW = 4
EXPLORE_SHARE = 0.05
NEW_NODE_JOBS = 20
PRICE_WEIGHT, LOAD_WEIGHT, LATENCY_WEIGHT, RELIABILITY_WEIGHT, REPUTATION_WEIGHT = 1.0, 1.0, 0.5, 2.0, 1.0
NEW_NODE_REPUTATION = 0.5
SORT_NAMES = {spb.PROVIDER_SORT_PRICE: "price", spb.PROVIDER_SORT_LATENCY: "latency",
              spb.PROVIDER_SORT_THROUGHPUT: "throughput"}

Candidate = tuple[NodeInfo, rpb.Model]


@dataclass(frozen=True, slots=True)
class Choice:
    info: NodeInfo
    model: rpb.Model
    reason: str
    candidates: int


def unit_price(model: rpb.Model, kind_llm: bool) -> int:
    p = model.offer.price
    return (p.per_million_input_tokens + p.per_million_output_tokens) if kind_llm else p.per_request


def _llm(cands: list[Candidate]) -> bool:
    return cands[0][1].offer.kind == rpb.MODEL_KIND_LLM


def _placed(info: NodeInfo, c: spb.Constraints) -> bool:
    if c.region and info.node.region != c.region:
        return False
    labels = info.node.labels
    return all(labels.get(k) == v for k, v in c.labels.items())


def candidates(table: NodeTable, req: spb.InferRequest, *, prices: bool = True) -> list[Candidate]:
    """The nodes that may serve ``req``; ``prices=False`` leaves out the
    price ceilings (to tell the caller that they alone ruled nodes out)."""
    now = time.monotonic()
    cap = preferences.ceiling(req)
    only, ignore = frozenset(req.provider.only), frozenset(req.provider.ignore)
    out = []
    for info in table.serving(req.model):
        if not info.available(now) or not _placed(info, req.constraints):
            continue
        if (only and not preferences.named(info, only)) or (ignore and preferences.named(info, ignore)):
            continue
        m = info.models[req.model]
        if prices and not cap.admits(m.offer.price):
            continue
        out.append((info, m))
    return out


def _scores(cands: list[Candidate]) -> list[tuple[float, str]]:
    llm = _llm(cands)
    cheapest = max(1, min(unit_price(m, llm) for _, m in cands))
    latencies = [i.latency_ms for i, _ in cands if i.latency_ms]
    best_latency = min(latencies) if latencies else None
    out = []
    for info, m in cands:
        price = unit_price(m, llm) / cheapest
        load = (info.in_flight + info.queue_depth) / info.capacity
        lat = (info.latency_ms / best_latency) if (best_latency and info.latency_ms) else 1.0
        rel = info.reliability()
        rep = reputation(info)
        score = (PRICE_WEIGHT * price + LOAD_WEIGHT * load + LATENCY_WEIGHT * lat + RELIABILITY_WEIGHT * (1 - rel)
                 + REPUTATION_WEIGHT * (1 - rep))
        why = (f"score {score:.3f} (price x{price:.2f}, load {load:.2f}, latency x{lat:.2f}, "
               f"reliability {rel:.3f}, reputation {rep:.2f})")
        out.append((score, why))
    return out


def reputation(info: NodeInfo) -> float:
    """The registry's record of the node's checks (0..1); a node with none yet counts as new (0.5)."""
    rep = info.node.reputation
    return rep.score if info.node.HasField("reputation") else NEW_NODE_REPUTATION


def latency_ms(info: NodeInfo, m: rpb.Model) -> float:
    """This scheduler's moving average, else the registry's canary time, else unknown (last)."""
    if info.latency_ms is not None:
        return info.latency_ms
    return m.canary_latency_us / 1000 if m.canary_latency_us else math.inf


def spare(info: NodeInfo) -> int:
    return info.capacity - max(info.in_flight, info.reported_in_flight) - info.queue_depth


def _sort_key(sort: int, info: NodeInfo, m: rpb.Model, llm: bool) -> float:
    if sort == spb.PROVIDER_SORT_PRICE:
        return unit_price(m, llm)
    if sort == spb.PROVIDER_SORT_LATENCY:
        return latency_ms(info, m)
    return -spare(info)


def ranked(cands: list[Candidate], sort: int) -> list[tuple[Candidate, str]]:
    """Every candidate, best first, with why: by ``sort`` (ties by score), or by score alone."""
    if not cands:
        return []
    llm = _llm(cands)
    scored = zip(_scores(cands), cands, strict=True)
    if sort in SORT_NAMES:
        keyed = sorted(scored, key=lambda x: (_sort_key(sort, x[1][0], x[1][1], llm), x[0][0], x[1][0].node_id))
        return [(c, f"provider.sort={SORT_NAMES[sort]} ({_sort_key(sort, c[0], c[1], llm):g}); {why}")
                for (_, why), c in keyed]
    return [(c, why) for (_, why), c in sorted(scored, key=lambda x: (x[0][0], x[1][0].node_id))]


def explorable(cands: list[Candidate]) -> list[Candidate]:
    """New nodes (little record) priced at or below the candidates' lower median."""
    llm = _llm(cands)
    median = statistics.median_low(unit_price(m, llm) for _, m in cands)
    return [c for c in cands
            if c[0].completed + c[0].failed < NEW_NODE_JOBS and unit_price(c[1], llm) <= median]


def choose(cands: list[Candidate], rnd: random.Random = random._inst,  # type: ignore[attr-defined]
           sort: int = spb.PROVIDER_SORT_UNSPECIFIED) -> Choice:
    """Picks one candidate (``cands`` must not be empty)."""
    n = len(cands)
    if n == 1:
        info, m = cands[0]
        return Choice(info, m, "the only ready node for this model within the constraints", 1)
    if sort in SORT_NAMES:
        (info, m), why = ranked(cands, sort)[0]
        return Choice(info, m, f"first of {n} by {why}", n)
    established = any(c[0].completed + c[0].failed >= NEW_NODE_JOBS for c in cands)
    if established and rnd.random() < EXPLORE_SHARE:
        new = explorable(cands)
        if new:
            info, m = rnd.choice(new)
            return Choice(info, m, f"exploration: a new node earning its record ({info.completed} jobs so far), "
                                   "priced at or below the median", n)
    scored = sorted(zip(_scores(cands), cands, strict=True), key=lambda x: x[0][0])
    best = scored[:BEST_FEW]
    a, b = rnd.sample(best, 2)
    (sa, why), (info, m) = min(a, b, key=lambda x: x[0][0])
    other = b if (a[1][0] is info) else a
    return Choice(info, m, f"power of two choices among the best {len(best)} of {n}: {why}; "
                           f"beat {other[0][0]:.3f}", n)


def plan(cands: list[Candidate], prefs: spb.ProviderPreferences, rnd: random.Random, *,
         attempts_max: int) -> tuple[Choice, ...]:
    """Up to ``attempts_max`` distinct nodes to try, in order: first those
    ``prefs.order`` names (in its order; a provider's nodes ranked among
    themselves), then, if fallbacks are allowed, each picked by
    :func:`choose` among the rest. Without fallbacks: only the ``order``
    nodes; without ``order``, the ``only`` nodes; without either, the first
    choice alone."""
    n = len(cands)
    out: list[Choice] = []
    for i, ident in enumerate(prefs.order):
        taken = {c.info.node_id for c in out}
        group = [c for c in cands if c[0].node_id not in taken and preferences.named(c[0], (ident,))]
        out.extend(Choice(info, m, f"provider.order[{i}] names it; {why}", n) for (info, m), why in
                   ranked(group, prefs.sort))
    fallbacks = preferences.allow_fallbacks(prefs)
    if prefs.order and not fallbacks:
        return tuple(out[:attempts_max])
    limit = attempts_max if fallbacks or prefs.only else 1
    taken = {c.info.node_id for c in out}
    pool = [c for c in cands if c[0].node_id not in taken]
    while pool and len(out) < limit:
        c = choose(pool, rnd, prefs.sort)
        out.append(Choice(c.info, c.model, c.reason, n))
        pool = [x for x in pool if x[0] is not c.info]
    return tuple(out[:attempts_max])
