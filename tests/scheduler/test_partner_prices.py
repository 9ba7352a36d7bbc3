"""Partners control what they pay, on real services and a real demo Triton:
two nodes serve the same model at different prices. A price above max_price
is never charged; the hold is sized at the price of the node chosen, never
the highest in the plan; a language model the platform cannot count is
refused; the catalog's tokenizer bills whatever digest the node claims; and
with only the expensive node up, a job with a ceiling is refused and costs
nothing. The books verify after each scenario."""

from __future__ import annotations

import dataclasses
import uuid

import asyncpg
import grpc
import pytest

from idlegrid.cli import demo_node
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler.pricing import llm_cost
from idlegrid.scheduler.v1 import scheduler_pb2 as spb
from tests.harness import agents, eventually
from tests.harness.stack import start_stack, stop_stack
from tests.scheduler.support import LLM, chat, reason_of

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

CHEAP = rpb.Price(per_million_input_tokens=50_000, per_million_output_tokens=200_000)
DEAR = rpb.Price(per_million_input_tokens=5_000_000, per_million_output_tokens=20_000_000)
BETWEEN = spb.MaxPrice(prompt=1_000_000, completion=1_000_000)  # above CHEAP, below DEAR
MAX_TOKENS = 6
JOBS = 12


def _config(name: str, price: rpb.Price):
    demo = demo_node.node_config()
    llm = dataclasses.replace(demo.models[LLM], price_per_million_input_tokens=price.per_million_input_tokens,
                              price_per_million_output_tokens=price.per_million_output_tokens)
    return dataclasses.replace(demo, labels={"node": name}, models={LLM: llm})


@pytest.fixture(scope="module")
async def stack(config, db_url):
    s = await start_stack(config, db_url)
    await s.add_node("cheap", node_config=_config("cheap", CHEAP), models=(LLM,))
    await s.add_node("dear", node_config=_config("dear", DEAR), models=(LLM,))
    yield s
    await stop_stack(s)


def _job(consumer: bytes, **provider) -> spb.InferRequest:
    req = chat(consumer, "Name a colour.", max_tokens=MAX_TOKENS)
    req.provider.CopyFrom(spb.ProviderPreferences(**provider))
    return req


async def _hold(stack, job_id: bytes) -> int:
    """The amount the job reserved on its credit lease. Each such job is its
    partner's first: it opened the lease with its reservation as the least
    the lease must hold (amount_min), read from the lease its record names."""
    rec = await stack.metering.GetJob(mpb.GetJobRequest(job_id=job_id))
    conn = await asyncpg.connect(stack.db_url)
    try:
        row = await conn.fetchrow("SELECT amount_min, amount FROM metering.leases WHERE lease_id = $1",
                                  uuid.UUID(bytes=rec.lease_id))
    finally:
        await conn.close()
    assert row is not None, "no lease for the job"
    assert row["amount"] >= row["amount_min"]
    return row["amount_min"]


async def test_a_price_above_max_price_is_never_charged(stack):
    cheap, dear = stack.nodes["cheap"].node_id, stack.nodes["dear"].node_id
    consumer = await stack.consumer(10**10)
    total = 0
    for _ in range(JOBS):
        r = await stack.scheduler.Infer(_job(consumer, max_price=BETWEEN))
        u = r.usage
        assert r.routing.node_id == cheap and r.routing.node_id != dear
        assert u.tokens_verified and 0 < u.completion_tokens <= MAX_TOKENS
        assert u.cost_micros == llm_cost(CHEAP, u.prompt_tokens, u.completion_tokens)
        ceiling = rpb.Price(per_million_input_tokens=BETWEEN.prompt, per_million_output_tokens=BETWEEN.completion)
        assert u.cost_micros <= llm_cost(ceiling, u.prompt_tokens, u.completion_tokens)
        total += u.cost_micros
    await stack.settled()
    c = (await stack.balances([consumer]))[0]
    assert (c.debits_posted, c.debits_pending) == (total, 0)
    await stack.check_books()


async def test_the_hold_is_sized_at_the_chosen_nodes_price_not_the_plans_highest(stack):
    """provider.order puts the cheap node first and the dear one second in
    the plan: the hold is the cheap node's maximum cost. A partner with
    exactly that much is served; one micro-credit less, refused (402)."""
    cheap, dear = stack.nodes["cheap"].node_id, stack.nodes["dear"].node_id
    req = _job(await stack.consumer(10**10), order=[cheap, dear])
    r = await stack.scheduler.Infer(req)
    assert r.routing.node_id == cheap and r.routing.attempt == 1
    cheap_hold = llm_cost(CHEAP, r.usage.prompt_tokens, MAX_TOKENS)
    assert await _hold(stack, req.job_id) == cheap_hold
    assert cheap_hold < llm_cost(DEAR, r.usage.prompt_tokens, MAX_TOKENS)
    assert r.usage.cost_micros <= cheap_hold
    exact = await stack.consumer(cheap_hold)
    r2 = await stack.scheduler.Infer(_job(exact, order=[cheap, dear]))
    assert r2.routing.node_id == cheap and r2.usage.prompt_tokens == r.usage.prompt_tokens
    short = await stack.consumer(cheap_hold - 1)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stack.scheduler.Infer(_job(short, order=[cheap, dear]))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(e.value) == "insufficient_funds"
    # Without preferences, whichever node is chosen first sets the hold.
    for _ in range(6):
        req = _job(await stack.consumer(10**10))
        r = await stack.scheduler.Infer(req)
        price = CHEAP if r.routing.node_id == cheap else DEAR
        assert r.routing.attempt == 1
        assert await _hold(stack, req.job_id) == llm_cost(price, r.usage.prompt_tokens, MAX_TOKENS)
    await stack.settled()
    e_acct, s_acct = await stack.balances([exact, short])
    assert (e_acct.debits_posted, e_acct.debits_pending) == (r2.usage.cost_micros, 0)
    assert (s_acct.debits_posted, s_acct.debits_pending) == (0, 0)
    await stack.check_books()


async def test_sort_order_and_allow_fallbacks_steer_the_job(stack):
    cheap, dear = stack.nodes["cheap"].node_id, stack.nodes["dear"].node_id
    consumer = await stack.consumer(10**10)
    r = await stack.scheduler.Infer(_job(consumer, sort=spb.PROVIDER_SORT_PRICE))
    assert r.routing.node_id == cheap and "provider.sort=price" in r.routing.reason
    r = await stack.scheduler.Infer(_job(consumer, order=[dear], allow_fallbacks=False))
    assert r.routing.node_id == dear
    r = await stack.scheduler.Infer(_job(consumer, ignore=[cheap]))
    assert r.routing.node_id == dear
    await stack.check_books()


async def test_a_language_model_the_platform_cannot_count_is_refused_and_the_catalogs_tokenizer_ignores_digests(
        stack):
    """The scheduler's view of both nodes names a catalog tokenizer (as the
    registry fills it from the catalog): one it lacks, then smollm2 with a
    weights digest the platform does not know."""
    consumer = await stack.consumer(10**10)
    models = [stack.table.nodes[n.node_id].models[LLM] for n in stack.nodes.values()]
    saved = [(m.tokenizer, m.offer.weights_digest) for m in models]
    try:
        for m in models:
            m.tokenizer = "no-such-tokenizer"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stack.scheduler.Infer(_job(consumer))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and reason_of(e.value) == "tokenizer_unavailable"
        for m in models:
            m.tokenizer, m.offer.weights_digest = "smollm2", "sha256:" + "0" * 64
        r = await stack.scheduler.Infer(_job(consumer))
        assert r.usage.tokens_verified and r.usage.prompt_tokens > 0
    finally:
        for m, (tok, digest) in zip(models, saved, strict=True):
            m.tokenizer, m.offer.weights_digest = tok, digest
    await stack.settled()
    c = (await stack.balances([consumer]))[0]
    assert (c.debits_posted, c.debits_pending) == (r.usage.cost_micros, 0)  # the refused job cost nothing
    await stack.check_books()


async def test_with_only_the_expensive_node_up_a_job_within_max_price_is_refused_and_costs_nothing(stack):
    """Runs last: it stops the cheap node."""
    cheap = stack.nodes.pop("cheap")
    await agents.stop_node(cheap)
    await eventually(lambda: not (info := stack.table.nodes.get(cheap.node_id)) or
                     info.node.state != rpb.NODE_STATE_READY, what="the scheduler to see the cheap node go")
    consumer = await stack.consumer(10**10)
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stack.scheduler.Infer(_job(consumer, max_price=BETWEEN))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(e.value) == "no_node_within_max_price", e.value.details()
    await stack.settled()
    c = (await stack.balances([consumer]))[0]
    assert (c.debits_posted, c.debits_pending) == (0, 0)
    await stack.check_books()
