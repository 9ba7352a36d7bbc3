"""Routing under the partner's provider preferences, as pure code: which
nodes are candidates (max_price, only, ignore), in what order they are tried
(sort, order, allow_fallbacks), and exploration that never picks a node
priced above the candidates' median. Randomness is a seeded Random."""

from __future__ import annotations

import os
import random

import pytest

from idlegrid.common.errors import InvalidArgument, Unavailable
from idlegrid.common.node_view import NodeInfo, NodeTable
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler import planning, preferences, routing
from idlegrid.scheduler.requests import check
from idlegrid.scheduler.v1 import scheduler_pb2 as spb
from tests.scheduler.support import LLM, chat

SEEDS = range(20)


def _node(price_in: int, price_out: int = 0, *, completed: int = 100, latency_ms: float | None = None,
          canary_us: int = 0, in_flight: int = 0, provider: bytes | None = None, per_request: int = 0,
          tokenizer: str = "") -> tuple[NodeInfo, rpb.Model]:
    node = rpb.Node(node_id=os.urandom(16), provider_id=provider or os.urandom(16),
                    provider_account_id=os.urandom(16), state=rpb.NODE_STATE_READY)
    model = rpb.Model(offer=rpb.ModelOffer(name=LLM, kind=rpb.MODEL_KIND_LLM, context_length=8192, price=rpb.Price(
        per_million_input_tokens=price_in, per_million_output_tokens=price_out, per_request=per_request)),
        verified=True, canary_latency_us=canary_us, tokenizer=tokenizer)
    node.models.append(model)
    info = NodeInfo(node=node, models={LLM: model}, completed=completed, latency_ms=latency_ms, in_flight=in_flight)
    return info, model


def _table(*cands: tuple[NodeInfo, rpb.Model]) -> NodeTable:
    table = NodeTable()
    for info, _ in cands:
        table.upsert(info.node)
        fresh = table.nodes[info.node_id]
        fresh.completed, fresh.latency_ms, fresh.in_flight = info.completed, info.latency_ms, info.in_flight
    return table


def _req(**provider) -> spb.InferRequest:
    req = chat(os.urandom(16), max_tokens=16)
    req.provider.CopyFrom(spb.ProviderPreferences(**provider))
    return req


def _ids(plan) -> list[bytes]:
    return [c.info.node_id for c in plan]


# ------------------------------------------------------------------ exploration

def test_exploration_never_picks_a_new_node_priced_above_the_median():
    """Five established nodes at 100, a new one at 100 and a new one at 10,000:
    the expensive new node is never in the best few, so any pick of it would
    be exploration; it never happens, while the cheap new node is explored."""
    established = [_node(100) for _ in range(5)]
    cheap_new, dear_new = _node(100, completed=0), _node(10_000, completed=0)
    cands = [*established, cheap_new, dear_new]
    picks = {cheap_new[0].node_id: 0, dear_new[0].node_id: 0}
    explored = 0
    rnd = random.Random(7)
    for _ in range(4000):
        c = routing.choose(cands, rnd)
        explored += c.reason.startswith("exploration")
        if c.info.node_id in picks:
            picks[c.info.node_id] += 1
        if c.reason.startswith("exploration"):
            assert routing.unit_price(c.model, True) <= 100
    assert explored > 0 and picks[cheap_new[0].node_id] > 0
    assert picks[dear_new[0].node_id] == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_every_exploration_pick_is_at_or_below_the_lower_median(seed):
    rnd = random.Random(seed)
    cands = [_node(rnd.randrange(1, 1000), completed=rnd.choice((0, 5, 100))) for _ in range(rnd.randrange(2, 12))]
    cands.append(_node(1, completed=100))  # at least one established node
    prices = sorted(routing.unit_price(m, True) for _, m in cands)
    median = prices[(len(prices) - 1) // 2]
    for _ in range(500):
        c = routing.choose(cands, rnd)
        if c.reason.startswith("exploration"):
            assert routing.unit_price(c.model, True) <= median


def test_the_explorable_nodes_are_the_new_ones_at_or_below_the_median():
    a, b, c, d = _node(10, completed=0), _node(20), _node(30, completed=0), _node(40, completed=0)
    assert routing.explorable([a, b, c, d]) == [a]  # lower median of 10, 20, 30, 40 is 20


# ---------------------------------------------------------------------- sort

def test_sort_price_puts_the_cheapest_first_whatever_the_randomness():
    cands = [_node(300, 300), _node(100, 50), _node(200, 10)]
    for seed in SEEDS:
        plan = routing.plan(cands, spb.ProviderPreferences(sort=spb.PROVIDER_SORT_PRICE), random.Random(seed),
                            attempts_max=3)
        assert [routing.unit_price(c.model, True) for c in plan] == [150, 210, 600]
        assert plan[0].reason.startswith("first of 3 by provider.sort=price")


def test_sort_latency_puts_the_fastest_first_then_the_canary_time_then_unknown():
    fast, slow = _node(100, latency_ms=5.0), _node(100, latency_ms=50.0)
    canary, unknown = _node(100, canary_us=20_000), _node(100)
    plan = routing.plan([unknown, slow, canary, fast], spb.ProviderPreferences(sort=spb.PROVIDER_SORT_LATENCY),
                        random.Random(1), attempts_max=4)
    assert _ids(plan) == [fast[0].node_id, canary[0].node_id, slow[0].node_id, unknown[0].node_id]


def test_sort_throughput_puts_the_most_spare_capacity_first():
    busy, idle, half = _node(100, in_flight=4), _node(100), _node(100, in_flight=2)
    plan = routing.plan([busy, half, idle], spb.ProviderPreferences(sort=spb.PROVIDER_SORT_THROUGHPUT),
                        random.Random(1), attempts_max=3)
    assert _ids(plan) == [idle[0].node_id, half[0].node_id, busy[0].node_id]


# --------------------------------------------------------- order and fallbacks

def test_order_is_tried_first_in_its_order_then_the_others():
    a, b, c = _node(100), _node(200), _node(300)
    prefs = spb.ProviderPreferences(order=[c[0].node_id, b[0].node_id])
    for seed in SEEDS:
        plan = routing.plan([a, b, c], prefs, random.Random(seed), attempts_max=3)
        assert _ids(plan) == [c[0].node_id, b[0].node_id, a[0].node_id]
        assert plan[0].reason.startswith("provider.order[0]")


def test_a_provider_id_in_order_stands_for_all_its_nodes():
    provider = os.urandom(16)
    p1, p2, other = _node(200, provider=provider), _node(100, provider=provider), _node(1)
    prefs = spb.ProviderPreferences(order=[provider], sort=spb.PROVIDER_SORT_PRICE)
    plan = routing.plan([other, p1, p2], prefs, random.Random(1), attempts_max=3)
    assert _ids(plan) == [p2[0].node_id, p1[0].node_id, other[0].node_id]


def test_without_fallbacks_only_the_order_nodes_are_tried():
    a, b, c = _node(100), _node(200), _node(300)
    prefs = spb.ProviderPreferences(order=[b[0].node_id, os.urandom(16)], allow_fallbacks=False)
    assert _ids(routing.plan([a, b, c], prefs, random.Random(1), attempts_max=3)) == [b[0].node_id]
    nobody = spb.ProviderPreferences(order=[os.urandom(16)], allow_fallbacks=False)
    assert routing.plan([a, b, c], nobody, random.Random(1), attempts_max=3) == ()


def test_without_fallbacks_or_order_only_the_first_choice_is_tried_but_all_only_nodes_are():
    cands = [_node(100), _node(200), _node(300)]
    for seed in SEEDS:
        assert len(routing.plan(cands, spb.ProviderPreferences(allow_fallbacks=False), random.Random(seed),
                                attempts_max=3)) == 1
    only = spb.ProviderPreferences(only=[c[0].node_id for c in cands[:2]], allow_fallbacks=False)
    assert len(routing.plan(cands[:2], only, random.Random(1), attempts_max=3)) == 2


def test_by_default_fallbacks_are_allowed_up_to_the_attempts():
    cands = [_node(100) for _ in range(5)]
    assert len(routing.plan(cands, spb.ProviderPreferences(), random.Random(1), attempts_max=3)) == 3


# ------------------------------------------------------ candidates and refusals

def test_only_and_ignore_choose_the_candidates_by_node_or_provider():
    provider = os.urandom(16)
    a, b, c = _node(100, provider=provider), _node(100, provider=provider), _node(100)
    table = _table(a, b, c)
    named = {x[0].node_id for x in routing.candidates(table, _req(only=[provider]))}
    assert named == {a[0].node_id, b[0].node_id}
    named = {x[0].node_id for x in routing.candidates(table, _req(ignore=[provider, c[0].node_id]))}
    assert named == set()
    named = {x[0].node_id for x in routing.candidates(table, _req(only=[provider], ignore=[a[0].node_id]))}
    assert named == {b[0].node_id}


def test_max_price_keeps_only_the_nodes_within_every_ceiling():
    cheap, dear_in, dear_out, fee = _node(100, 100), _node(900, 100), _node(100, 900), _node(100, 100, per_request=5)
    table = _table(cheap, dear_in, dear_out, fee)
    req = _req(max_price=spb.MaxPrice(prompt=500, completion=500, request=0))
    assert {x[0].node_id for x in routing.candidates(table, req)} == {cheap[0].node_id}
    for _ in range(50):
        assert _ids(planning.route(table, req)) == [cheap[0].node_id]


def test_a_zero_max_price_means_free_nodes_only_and_unset_means_no_ceiling():
    free, paid = _node(0, 0), _node(1, 0)
    table = _table(free, paid)
    assert {x[0].node_id for x in routing.candidates(table, _req(max_price=spb.MaxPrice(prompt=0)))} == \
        {free[0].node_id}
    assert len(routing.candidates(table, _req(max_price=spb.MaxPrice()))) == 2


def test_the_lower_of_the_constraints_and_the_provider_ceiling_applies():
    req = _req(max_price=spb.MaxPrice(prompt=500, completion=7))
    req.constraints.max_price_per_million_input_tokens = 300
    req.constraints.max_price_per_million_output_tokens = 0  # no bound
    assert preferences.ceiling(req) == preferences.Ceiling(prompt=300, completion=7, request=None)


def test_a_request_no_node_fits_by_price_is_refused_with_its_own_reason():
    table = _table(_node(1000, 1000), _node(2000, 2000))
    with pytest.raises(Unavailable) as e:
        planning.route(table, _req(max_price=spb.MaxPrice(prompt=999)))
    assert e.value.reason == "no_node_within_max_price"
    with pytest.raises(Unavailable) as e:
        planning.route(table, _req(only=[os.urandom(16)], max_price=spb.MaxPrice(prompt=999)))
    assert e.value.reason == "no_node"
    with pytest.raises(Unavailable) as e:
        planning.route(table, _req(order=[os.urandom(16)], allow_fallbacks=False))
    assert e.value.reason == "no_node"


def test_provider_ids_must_be_16_bytes_and_at_most_64():
    for bad in (dict(order=[b"short"]), dict(ignore=[os.urandom(16)] * 65)):
        with pytest.raises(InvalidArgument):
            check(_req(**bad))
    check(_req(only=[os.urandom(16)] * 64, sort=spb.PROVIDER_SORT_LATENCY))


# ------------------------------------------------------------------- holds

def test_the_hold_is_the_chosen_nodes_price_and_dearer_retries_are_dropped():
    cheap, dear, same = _node(100, 1000), _node(5000, 50_000), _node(100, 1000)
    plan = tuple(routing.Choice(i, m, "test", 3) for i, m in (cheap, dear, same))
    req = _req()
    job = planning.prepare(req, plan, counter=None, started_ns=0, t0_s=0.0)
    prompt_est = len(job.text_input.encode()) + planning.TEMPLATE_BYTES
    assert job.hold_micros == planning.pricing.llm_cost(cheap[1].offer.price, prompt_est, 16)
    assert _ids(job.plan) == [cheap[0].node_id, same[0].node_id]


def test_a_retry_with_another_tokenizer_is_dropped():
    a, b = _node(100, tokenizer="smollm2"), _node(100, tokenizer="other")
    plan = tuple(routing.Choice(i, m, "test", 2) for i, m in (a, b))
    job = planning.prepare(_req(), plan, counter=None, started_ns=0, t0_s=0.0)
    assert _ids(job.plan) == [a[0].node_id]


# ------------------------------------------------------------------ reputation

def test_a_node_with_a_poor_record_of_checks_loses_to_an_equal_one_with_a_good_record():
    good, poor = _node(100), _node(100)
    good[0].node.reputation.CopyFrom(rpb.Reputation(score=0.95, checks_passed=40))
    poor[0].node.reputation.CopyFrom(rpb.Reputation(score=0.2, checks_failed=3, count_disagreements=5))
    for seed in SEEDS:
        choice = routing.choose([good, poor], random.Random(seed))
        assert choice.info is good[0] or choice.reason.startswith("exploration"), choice.reason
    assert "reputation 0.95" in routing.choose([good, poor], random.Random(0)).reason
