"""Billing on the platform's evidence, with real services and a real
cheating demo node (``--cheat inflate-tokens``: it serves honestly but
reports three times its token counts). The platform's counts are billed,
the node's are only kept for the record, and each disagreement reaches the
registry (ReportCheck, a token-count mark on the node's reputation) off the
response path. The books verify."""

from __future__ import annotations

import pytest

from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler.pricing import llm_cost
from tests.harness import eventually
from tests.scheduler.support import LLM, chat

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

JOBS = 3


async def test_a_node_reporting_inflated_counts_is_billed_the_platforms_count_and_reported(stack):
    node = await stack.add_node("inflate", models=(LLM,), cheat="inflate-tokens")
    price = stack.table.nodes[node.node_id].models[LLM].offer.price
    consumer = await stack.consumer(10**10)
    total = 0
    for i in range(JOBS):
        r = await stack.scheduler.Infer(chat(consumer, f"Name {i + 2} colours.", max_tokens=8, node="inflate"))
        u = r.usage
        assert r.routing.node_id == node.node_id and u.tokens_verified and 0 < u.completion_tokens <= 8
        assert u.cost_micros == llm_cost(price, u.prompt_tokens, u.completion_tokens)
        total += u.cost_micros
        await stack.settled()
        rec = await stack.metering.GetJob(mpb.GetJobRequest(job_id=r.job_id))
        assert rec.node_prompt_tokens > u.prompt_tokens and rec.cost_micros == u.cost_micros
    assert stack.table.nodes[node.node_id].mismatches == JOBS

    async def reported() -> bool:
        n = (await stack.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id))).node
        return n.reputation.count_disagreements >= JOBS

    await eventually(reported, what="the registry to hear of every disagreement")
    c = (await stack.balances([consumer]))[0]
    assert (c.debits_posted, c.debits_pending) == (total, 0)
    await stack.check_books()
