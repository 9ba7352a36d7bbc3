"""Jobs on the node link when something breaks: the relay holding the link
dies mid-stream, the agent dies mid-stream, the consumer leaves, the node
floods past its bound. Each time only what was delivered is billed, and the
books balance. Two relay replicas run: the agents know both, so a node whose
relay dies comes back on the other."""

from __future__ import annotations

import pytest

from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.registry.v1 import registry_pb2 as rpb
from tests.harness.polling import eventually
from tests.harness.stack import start_stack, stop_stack
from tests.scheduler.support import LLM, chat

pytestmark = pytest.mark.slow  # a scenario: real services, two relays and demo Tritons

STORY = "Tell me a long story."


@pytest.fixture(scope="module")
async def stack(config, db_url):
    s = await start_stack(config, db_url)
    try:
        await s.add_relay()
    except BaseException:
        await stop_stack(s)
        raise
    yield s
    await stop_stack(s)


def _link(stack, node) -> rpb.NodeLink:
    return stack.table.nodes[node.node_id].node.link


async def _stream(stack, req, *, on_text=None) -> tuple[list[str], object]:
    """Runs a streamed job; ``on_text(n)`` after the n-th text chunk. Returns
    the texts and the final chunk (None when the stream ended in an error)."""
    texts, final = [], None
    async for c in stack.scheduler.InferStream(req):
        kind = c.WhichOneof("chunk")
        if kind == "text":
            texts.append(c.text)
            if on_text is not None:
                await on_text(len(texts))
        elif kind == "final":
            final = c.final
    return texts, final


async def _billed_partial(stack, consumer: bytes, req, final, *, max_tokens: int) -> None:
    assert final is not None and 0 < final.usage.completion_tokens < max_tokens
    await stack.settled()
    rec = await stack.metering.GetJob(mpb.GetJobRequest(job_id=req.job_id))
    assert rec.outcome == mpb.OUTCOME_PARTIAL and rec.cost_micros == final.usage.cost_micros
    c = (await stack.balances([consumer]))[0]
    assert c.debits_posted == final.usage.cost_micros and c.debits_pending == 0
    await stack.check_books()


async def test_a_node_that_floods_past_its_bound_is_cut_off_and_billed_for_what_was_delivered(stack):
    """The node generates 40 tokens past max_tokens: the bound derived from
    max_tokens (bounds.py) cuts it off."""
    await stack.add_node("flood", models=(LLM,), llm_extra_tokens=40)
    consumer = await stack.consumer(10**9)
    req = chat(consumer, STORY, max_tokens=2, node="flood")
    texts, final = await _stream(stack, req)
    assert final is not None and 0 < len(texts) <= 2 + 4, texts
    await stack.settled()
    rec = await stack.metering.GetJob(mpb.GetJobRequest(job_id=req.job_id))
    assert rec.outcome == mpb.OUTCOME_PARTIAL and rec.cost_micros == final.usage.cost_micros
    assert stack.table.nodes[stack.nodes["flood"].node_id].failed >= 1
    await stack.check_books()


async def test_a_consumer_who_leaves_cancels_the_request_on_the_node(stack):
    node = await stack.add_node("left", models=(LLM,), llm_delay_ms=150)
    consumer = await stack.consumer(10**9)
    link = node.agent.link
    cancelled_before = link.cancelled_calls
    req = chat(consumer, STORY, max_tokens=100, node="left")
    call = stack.scheduler.InferStream(req)
    seen = 0
    async for c in call:
        seen += c.WhichOneof("chunk") == "text"
        if seen == 3:
            call.cancel()
            break
    # The agent got the relay's Cancel and cancelled its call to Triton.
    await eventually(lambda: link.cancelled_calls > cancelled_before and link.in_flight == 0,
                     what="the cancellation to reach the node's Triton call")
    await stack.settled()
    rec = await stack.metering.GetJob(mpb.GetJobRequest(job_id=req.job_id))
    assert rec.outcome == mpb.OUTCOME_PARTIAL and 0 < rec.completion_tokens < 100
    await stack.check_books()


async def test_killing_the_agent_mid_stream_bills_only_what_was_delivered(stack):
    node = await stack.add_node("crash", models=(LLM,), llm_delay_ms=150)
    consumer = await stack.consumer(10**9)
    req = chat(consumer, STORY, max_tokens=100, node="crash")

    async def crash(n: int) -> None:
        if n == 3:
            await node.agent.stop()  # what a crash looks like: no goodbye to the registry or the relay

    texts, final = await _stream(stack, req, on_text=crash)
    assert 3 <= len(texts) < 100
    await _billed_partial(stack, consumer, req, final, max_tokens=100)
    # The link is gone: the node is out of routing within seconds.
    await eventually(lambda: stack.table.nodes.get(node.node_id) is None
                     or stack.table.nodes[node.node_id].node.state != rpb.NODE_STATE_READY,
                     what="the node whose agent died to leave routing")


async def test_killing_the_relay_mid_stream_bills_what_was_delivered_and_the_node_moves_to_another_replica(stack):
    node = await stack.add_node("moving", models=(LLM,), llm_delay_ms=150)
    consumer = await stack.consumer(10**9)
    replicas = {f"127.0.0.1:{r.port}": r for r in (stack.relay_srv, *stack.relays)}
    first = _link(stack, node).relay_addr
    assert first in replicas, (first, list(replicas))
    holder = replicas[first]
    req = chat(consumer, STORY, max_tokens=100, node="moving")

    async def kill(n: int) -> None:
        if n == 3:
            await holder.stop(0)

    texts, final = await _stream(stack, req, on_text=kill)
    assert 3 <= len(texts) < 100
    # The stopped replica is gone for good: the stack must not stop it again.
    for part, srv in list(stack.servers.items()):
        if srv is holder:
            del stack.servers[part]
    if holder in stack.relays:
        stack.relays.remove(holder)
    await _billed_partial(stack, consumer, req, final, max_tokens=100)

    def moved():
        info = stack.table.nodes.get(node.node_id)
        return (info is not None and info.node.state == rpb.NODE_STATE_READY
                and info.node.link.relay_addr not in ("", first))

    await eventually(moved, what="the node to come back through the other relay")
    r = await stack.scheduler.Infer(chat(consumer, "Say hi.", max_tokens=4, node="moving"))
    assert r.text and r.routing.node_id == node.node_id
