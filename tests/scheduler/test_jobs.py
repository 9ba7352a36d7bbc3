"""The money path of a job end to end: real Triton, real services."""

from __future__ import annotations

import asyncio
import os

import grpc
import numpy as np
import pytest

from idlegrid.common.clearing import llm_cost_picos, micros_ceil, provider_micros
from idlegrid.ledger.ids import well_known_account
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.scheduler.pricing import llm_cost
from idlegrid.scheduler.v1 import scheduler_pb2 as spb
from tests.harness import eventually
from tests.harness.books import usage_record
from tests.scheduler.support import LLM, chat, echo, reason_of

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

REVENUE = well_known_account("platform:revenue", 1)


def _price(stack, model=LLM):
    info = next(iter(stack.nodes.values())).node_id
    return stack.table.nodes[info].models[model].offer.price


async def test_a_chat_job_is_billed_by_platform_counted_tokens_and_settled(stack):
    consumer = await stack.consumer(10**9)
    before, fees_before = (b.credits_posted for b in await stack.balances([stack.provider_account, REVENUE]))
    r = await stack.scheduler.Infer(chat(consumer))
    assert r.text and r.finish_reason in ("stop", "length")
    u = r.usage
    assert u.tokens_verified and u.prompt_tokens > 0 and 0 < u.completion_tokens <= 8
    assert u.cost_micros == llm_cost(_price(stack), u.prompt_tokens, u.completion_tokens)
    assert r.routing.node_id == stack.nodes["a"].node_id and r.routing.reason and r.routing.attempt == 1
    rec = await stack.metering.GetJob(mpb.GetJobRequest(job_id=r.job_id))
    assert rec.cost_picos == llm_cost_picos(rec.price_input_per_mtok, rec.price_output_per_mtok,
                                            u.prompt_tokens, u.completion_tokens)
    await stack.settled()
    # The job is alone on its lease and its node's clearing aggregate (the module's jobs run one at a
    # time, each settled): the lease is charged ceil(its exact cost); the provider earns the floor of
    # its share, rounded once for the aggregate; the fee is the rest.
    c, p, fees = await stack.balances([consumer, stack.provider_account, REVENUE])
    assert (c.debits_posted, c.debits_pending) == (micros_ceil(rec.cost_picos), 0) == (u.cost_micros, 0)
    earned = provider_micros(rec.cost_picos, stack.config.platform_fee_bps)
    assert p.credits_posted - before == earned
    assert fees.credits_posted - fees_before == u.cost_micros - earned
    rec = await stack.metering.GetJob(mpb.GetJobRequest(job_id=r.job_id))
    assert rec.outcome == mpb.OUTCOME_COMPLETED and rec.cost_micros == u.cost_micros
    assert rec.window_id and bool(rec.aggregate_id) == (earned > 0) and rec.provider_micros == earned
    assert (rec.node_prompt_tokens, rec.node_completion_tokens) != (0, 0)
    await stack.check_books()


async def test_a_streamed_job_sends_routing_then_text_then_usage(stack):
    consumer = await stack.consumer(10**9)
    chunks = [c async for c in stack.scheduler.InferStream(chat(consumer, "Count to three.", max_tokens=12))]
    kinds = [c.WhichOneof("chunk") for c in chunks]
    assert kinds[0] == "routing" and kinds[-1] == "final" and kinds.count("text") >= 2
    final = chunks[-1].final
    text = "".join(c.text for c in chunks if c.WhichOneof("chunk") == "text")
    assert text and final.usage.completion_tokens > 0 and final.usage.cost_micros > 0
    await stack.settled()
    c = (await stack.balances([consumer]))[0]
    assert c.debits_posted == final.usage.cost_micros
    await stack.check_books()


async def test_a_tensor_job_passes_through_and_costs_the_request_price(stack):
    consumer = await stack.consumer(10**6)
    r = await stack.scheduler.Infer(echo(consumer, (1.5, -2.0, 4.0)))
    out = np.frombuffer(r.outputs[0].contents, dtype="<f4")
    assert list(out) == [1.5, -2.0, 4.0]
    assert r.usage.requests == 1 and r.usage.cost_micros == _price(stack, "echo").per_request
    await stack.check_books()


async def test_a_consumer_without_enough_credits_is_refused_before_dispatch(stack):
    consumer = await stack.consumer(3)
    req = chat(consumer)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stack.scheduler.Infer(req)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(e.value) == "insufficient_funds"
    with pytest.raises(grpc.aio.AioRpcError) as e2:
        await stack.metering.GetJob(mpb.GetJobRequest(job_id=req.job_id))
    assert e2.value.code() == grpc.StatusCode.NOT_FOUND
    c = (await stack.balances([consumer]))[0]
    assert (c.debits_posted, c.debits_pending, c.credits_posted) == (0, 0, 3)


async def test_fifty_concurrent_jobs_never_overspend_a_balance(stack):
    price = _price(stack, "echo").per_request
    consumer = await stack.consumer(price * 3 + price // 2)
    results = await asyncio.gather(*(stack.scheduler.Infer(echo(consumer)) for _ in range(50)),
                                   return_exceptions=True)
    ok = [r for r in results if isinstance(r, spb.InferResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 3 and len(refused) == 47
    assert all(e.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(e) == "insufficient_funds"
               for e in refused)
    await stack.settled()
    c = (await stack.balances([consumer]))[0]
    assert c.debits_posted == 3 * price and c.debits_pending == 0
    assert c.debits_posted <= c.credits_posted
    await stack.check_books()


async def test_a_job_id_runs_once(stack):
    consumer = await stack.consumer(10**6)
    job = os.urandom(16)
    await stack.scheduler.Infer(echo(consumer, job=job))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stack.scheduler.Infer(echo(consumer, job=job))
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    await stack.settled()
    assert (await stack.balances([consumer]))[0].debits_posted == _price(stack, "echo").per_request


@pytest.mark.parametrize("mutate, code", [
    (lambda r: setattr(r, "job_id", b"short"), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: setattr(r, "model", "no-such-model"), grpc.StatusCode.NOT_FOUND),
    (lambda r: setattr(r, "model", "bad model name!"), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: r.text.ClearField("messages"), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: setattr(r.text, "max_tokens", 10**6), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: setattr(r.text, "max_tokens", 30_000), grpc.StatusCode.INVALID_ARGUMENT),  # beyond context
    (lambda r: setattr(r.text, "temperature", 5.0), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: r.text.messages.add(role="robot", content="x"), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: setattr(r, "timeout_ms", 10**7), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda r: setattr(r.constraints, "region", "mars"), grpc.StatusCode.UNAVAILABLE),
    (lambda r: setattr(r.text.messages[0], "content", "x" * (1 << 21)), grpc.StatusCode.RESOURCE_EXHAUSTED),
])
async def test_bad_requests_are_refused_with_a_clear_status_and_charge_nothing(stack, mutate, code):
    consumer = await stack.consumer(10**6)
    req = chat(consumer)
    mutate(req)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stack.scheduler.Infer(req)
    assert e.value.code() == code, e.value.details()
    c = (await stack.balances([consumer]))[0]
    assert (c.debits_posted, c.debits_pending) == (0, 0)


async def test_a_tensor_model_called_with_text_is_invalid(stack):
    consumer = await stack.consumer(10**6)
    req = chat(consumer)
    req.model = "echo"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stack.scheduler.Infer(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_client_that_leaves_mid_stream_pays_only_for_what_it_received(stack):
    consumer = await stack.consumer(10**9)
    req = chat(consumer, "Write a long story about a cat.", max_tokens=200)
    call = stack.scheduler.InferStream(req)
    texts = 0
    async for c in call:
        if c.WhichOneof("chunk") == "text":
            texts += 1
            if texts == 3:
                break
    call.cancel()
    await eventually(lambda: usage_record(stack.metering, req.job_id), what="the cancelled job's usage")
    await stack.settled()
    rec = await stack.metering.GetJob(mpb.GetJobRequest(job_id=req.job_id))
    assert rec.outcome == mpb.OUTCOME_PARTIAL
    assert 0 < rec.completion_tokens < 200
    c = (await stack.balances([consumer]))[0]
    assert c.debits_posted == rec.cost_micros and c.debits_pending == 0
    await stack.check_books()
