"""The official openai client against a running gateway: models, chat and
completions with and without streaming, usage with cost, the money it moves,
and the mapping of errors to statuses."""

from __future__ import annotations

import asyncpg
import httpx
import openai
import pytest

from idlegrid.common.clearing import llm_cost_picos, micros_ceil, provider_micros
from idlegrid.ledger.audit import verify

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

LLM = "smollm2-135m-instruct"
FEE_BPS = 1000  # Config's default platform fee
CHAT = [{"role": "user", "content": "Name a colour."}]  # with temperature 0 it always answers something


def client(stack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=120)


async def _quiet(stack) -> dict:
    """The provider's earnings once nothing is pending (earlier jobs settled)."""
    return await stack.quiet_earnings()


async def test_models_lists_each_ready_model_with_price_range_and_node_count(stack):
    _, key = await stack.consumer()
    models = {m.id: m for m in (await client(stack, key).models.list()).data}
    llm, echo = models[LLM], models["echo"]
    assert llm.kind == "llm" and llm.nodes == 1 and llm.context_length == 2048
    assert llm.pricing["input_per_million_tokens"] == {"min": 10_000_000, "max": 10_000_000}
    assert llm.pricing["output_per_million_tokens"] == {"min": 20_000_000, "max": 20_000_000}
    assert echo.kind == "tensor" and echo.pricing["per_request"] == {"min": 1000, "max": 1000}
    one = await client(stack, key).models.retrieve("echo")
    assert one.id == "echo"


async def test_chat_completion_has_text_usage_with_cost_and_idlegrid_headers(stack):
    _, key = await stack.consumer()
    raw = await client(stack, key).chat.completions.with_raw_response.create(
        model=LLM, messages=CHAT, max_tokens=8, temperature=0)
    c = raw.parse()
    assert c.object == "chat.completion" and c.model == LLM
    assert c.choices[0].message.role == "assistant" and c.choices[0].message.content
    assert c.choices[0].finish_reason in ("stop", "length")
    u = c.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 8
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.cost_micros == -(-(u.prompt_tokens * 10_000_000 + u.completion_tokens * 20_000_000) // 1_000_000)
    assert int(raw.headers["x-idlegrid-cost-micros"]) == u.cost_micros
    assert raw.headers["x-idlegrid-node"] == stack.node_id.hex()
    assert c.id == "chatcmpl-" + raw.headers["x-idlegrid-job-id"].replace("-", "")


async def test_chat_stream_sends_deltas_then_a_final_chunk_with_usage_and_done(stack):
    _, key = await stack.consumer()
    stream = await client(stack, key).chat.completions.create(model=LLM, messages=CHAT, max_tokens=8,
                                                              temperature=0, stream=True)
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    last = chunks[-1]
    assert last.object == "chat.completion.chunk" and last.choices[0].finish_reason in ("stop", "length")
    assert last.usage.completion_tokens > 0 and last.usage.cost_micros > 0
    # On the wire: the job and node headers (no cost header), and [DONE] at the end.
    async with stack.client(key) as h, h.stream("POST", "/v1/chat/completions", json={
            "model": LLM, "messages": CHAT, "max_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-idlegrid-node"] == stack.node_id.hex() and "x-idlegrid-job-id" in r.headers
        assert "x-idlegrid-cost-micros" not in r.headers
        body = (await r.aread()).decode()
    assert body.endswith("data: [DONE]\n\n")


async def test_stream_options_include_usage_adds_openais_usage_only_chunk(stack):
    _, key = await stack.consumer()
    stream = await client(stack, key).chat.completions.create(
        model=LLM, messages=CHAT, max_tokens=4, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.cost_micros > 0
    assert chunks[-2].choices[0].finish_reason is not None and chunks[-2].usage is None


async def test_completions_with_and_without_stream(stack):
    _, key = await stack.consumer()
    c = await client(stack, key).completions.create(model=LLM, prompt="The sky is", max_tokens=6, temperature=0)
    assert c.object == "text_completion" and c.choices[0].text and c.usage.cost_micros > 0
    stream = await client(stack, key).completions.create(model=LLM, prompt="The sky is", max_tokens=6,
                                                         temperature=0, stream=True)
    chunks = [x async for x in stream]
    assert all(x.object == "text_completion" for x in chunks)
    assert "".join(x.choices[0].text for x in chunks if x.choices)
    assert chunks[-1].usage.cost_micros > 0 and chunks[-1].choices[0].finish_reason in ("stop", "length")


async def test_a_request_moves_exactly_its_cost_from_partner_to_provider_less_the_fee(stack, db_url):
    """available_micros falls by exactly cost_micros; the provider's settled
    earnings rise by cost - fee (floor-rounded); the ledger verifies. The job
    runs on a credit lease of its own (a new partner): the lease is held, then
    posted for ceil(the job's exact cost), and the node's aggregate in its
    clearing window (this job alone) is floor(exact cost - fee)."""
    credits = 5_000_000
    _, key = await stack.consumer(credits)
    before = await _quiet(stack)
    c = await client(stack, key).chat.completions.create(model=LLM, messages=CHAT, max_tokens=8, temperature=0)
    cost = c.usage.cost_micros
    assert cost > 0
    account = await stack.settled_account(key)
    assert account["held_micros"] == 0
    assert account["available_micros"] == credits - cost and account["spent_micros"] == cost
    after = await _quiet(stack)
    picos = llm_cost_picos(10_000_000, 20_000_000, c.usage.prompt_tokens, c.usage.completion_tokens)
    assert cost == micros_ceil(picos)
    provider_share = provider_micros(picos, FEE_BPS)
    assert after["earned_micros"] - before["earned_micros"] == provider_share
    async with stack.client(key) as h:
        usage = (await h.get("/v1/account/usage")).json()
        tx = (await h.get("/v1/account/transactions")).json()
    assert [j["cost_micros"] for j in usage["jobs"]["data"]] == [cost]
    assert sum(b["cost_micros"] for b in usage["buckets"]) == cost
    types = [t["type"] for t in tx["data"]]
    assert types == ["settle", "lease", "topup"], types
    settle, lease = tx["data"][0], tx["data"][1]
    assert settle["lease_id"] == lease["lease_id"] == lease["id"] and settle["job_id"] is None
    assert settle["amount_micros"] == cost and lease["pending"] and lease["amount_micros"] >= cost
    conn = await asyncpg.connect(db_url)
    try:
        assert (await verify(conn)).ok
    finally:
        await conn.close()


async def test_errors_map_to_401_402_404(stack):
    _, key = await stack.consumer()
    with pytest.raises(openai.AuthenticationError) as e:
        await client(stack, key[:-4] + "AAAA").chat.completions.create(model=LLM, messages=CHAT)
    assert e.value.status_code == 401
    _, broke = await stack.consumer(credits=0)
    with pytest.raises(openai.APIStatusError) as e:
        await client(stack, broke).chat.completions.create(model=LLM, messages=CHAT, max_tokens=8)
    assert e.value.status_code == 402 and e.value.body["code"] == "insufficient_funds"
    with pytest.raises(openai.APIStatusError) as e:  # a stream is refused before it starts
        await client(stack, broke).chat.completions.create(model=LLM, messages=CHAT, stream=True)
    assert e.value.status_code == 402
    with pytest.raises(openai.NotFoundError) as e:
        await client(stack, key).chat.completions.create(model="no-such-model", messages=CHAT)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await client(stack, key).embeddings.create(model="no-such-model", input="x")
    with pytest.raises(openai.BadRequestError) as e:  # served, but not an embedding model
        await client(stack, key).embeddings.create(model=LLM, input="x")
    assert e.value.body["code"] == "model_not_supported"
    account = await stack.account(broke)
    assert account["spent_micros"] == 0 and account["held_micros"] == 0


async def test_an_idempotency_key_runs_the_job_once(stack):
    _, key = await stack.consumer()
    headers = {"Idempotency-Key": "order-42"}
    first = await client(stack, key).chat.completions.create(model=LLM, messages=CHAT, max_tokens=4,
                                                             extra_headers=headers)
    with pytest.raises(openai.ConflictError) as e:
        await client(stack, key).chat.completions.create(model=LLM, messages=CHAT, max_tokens=4,
                                                         extra_headers=headers)
    assert e.value.body["code"] == "idempotency_key_reused"
    account = await stack.settled_account(key)
    assert account["spent_micros"] == first.usage.cost_micros


async def test_a_client_that_leaves_mid_stream_pays_only_for_what_was_delivered(stack):
    _, key = await stack.consumer()
    async with stack.client(key) as h, h.stream("POST", "/v1/chat/completions", json={
            "model": LLM, "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
            "max_tokens": 100, "temperature": 0, "stream": True}) as r:
        assert r.status_code == 200
        seen = 0
        async for line in r.aiter_lines():
            seen += line.startswith("data: ")
            if seen >= 4:  # the role chunk, then text
                break
    account = await stack.settled_account(key)
    full = -(-(100 * 20_000_000) // 1_000_000)  # the output alone, had all 100 tokens come
    assert 0 < account["spent_micros"] < full, account


async def test_a_body_the_scheduler_refuses_is_a_400_not_a_500(stack):
    _, key = await stack.consumer()
    async with stack.client(key) as h:
        r = await h.post("/v2/models/" + LLM + "/infer", json={
            "inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_a_provider_key_cannot_run_inference(stack, path):
    async with httpx.AsyncClient(base_url=stack.url, headers={"authorization": f"Bearer {stack.provider_key}"}) as h:
        r = await h.post(path, json={"model": LLM, "messages": CHAT, "prompt": "x"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_scope"
