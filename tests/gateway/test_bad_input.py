"""Every bad input gets a clear HTTP error in OpenAI's shape, and leaves no
partial state behind."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from idlegrid.common.channel import open_channel
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.ledger.v1 import ledger_pb2_grpc
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.registry.v1 import registry_pb2_grpc
from tests.harness import TOKEN

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

LLM = "smollm2-135m-instruct"
MSG = [{"role": "user", "content": "hi"}]


def _error(r, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize("body, param", [
    ({"messages": MSG}, "model"),
    ({"model": LLM}, "messages"),
    ({"model": LLM, "messages": []}, "messages"),
    ({"model": LLM, "messages": "hi"}, "messages"),
    ({"model": LLM, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"model": LLM, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": LLM, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content"),
    ({"model": LLM, "messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]},
     "messages[0].tool_calls"),
    ({"model": LLM, "messages": MSG, "n": 2}, "n"),
    ({"model": LLM, "messages": MSG, "tools": [{"type": "function"}]}, "tools"),
    ({"model": LLM, "messages": MSG, "logprobs": True}, "logprobs"),
    ({"model": LLM, "messages": MSG, "response_format": {"type": "json_object"}}, "response_format"),
    ({"model": LLM, "messages": MSG, "temperature": 3}, "temperature"),
    ({"model": LLM, "messages": MSG, "temperature": "hot"}, "temperature"),
    ({"model": LLM, "messages": MSG, "top_p": 0}, "top_p"),
    ({"model": LLM, "messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"model": LLM, "messages": MSG, "max_completion_tokens": 10**6}, "max_completion_tokens"),
    ({"model": LLM, "messages": MSG, "stop": [""]}, "stop"),
    ({"model": LLM, "messages": MSG, "stop": 7}, "stop"),
    ({"model": LLM, "messages": MSG, "seed": 1.5}, "seed"),
    ({"model": LLM, "messages": MSG, "stream": "yes"}, "stream"),
    ({"model": LLM, "messages": MSG, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": LLM, "messages": MSG, "presence_penalty": 1}, "presence_penalty"),
    ({"model": LLM, "messages": MSG, "frobnicate": 1}, "frobnicate"),
])
async def test_bad_chat_bodies_are_400_naming_the_field(stack, body, param):
    _, key = await stack.consumer()
    async with stack.client(key) as c:
        _error(await c.post("/v1/chat/completions", json=body), 400, param)
    assert (await stack.account(key))["held_micros"] == 0


@pytest.mark.parametrize("body, param", [
    ({"model": LLM}, "prompt"),
    ({"model": LLM, "prompt": ""}, "prompt"),
    ({"model": LLM, "prompt": ["a", "b"]}, "prompt"),
    ({"model": LLM, "prompt": [1, 2, 3]}, "prompt"),
    ({"model": LLM, "prompt": "x", "echo": True}, "echo"),
    ({"model": LLM, "prompt": "x", "best_of": 3}, "best_of"),
    ({"model": LLM, "prompt": "x", "messages": MSG}, "messages"),
])
async def test_bad_completion_bodies_are_400(stack, body, param):
    _, key = await stack.consumer()
    async with stack.client(key) as c:
        _error(await c.post("/v1/completions", json=body), 400, param)


async def test_malformed_or_non_object_json_is_400(stack):
    _, key = await stack.consumer()
    async with stack.client(key) as c:
        for raw in (b"{not json", b"[1, 2]", b"", b"\xff\xfe"):
            _error(await c.post("/v1/chat/completions", content=raw), 400)


async def test_a_huge_body_is_413_whether_announced_or_streamed(stack):
    _, key = await stack.consumer()
    big = b"x" * (8 * 1024 * 1024 + 1)

    async def chunks():
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]

    async with stack.client(key) as c:
        _error(await c.post("/v1/chat/completions", content=big), 413)
        _error(await c.post("/v1/chat/completions", content=chunks()), 413)  # chunked: no Content-Length
        r = await c.post("/v2/models/echo/infer", content=big)
        assert r.status_code == 413 and isinstance(r.json()["error"], str)


async def test_a_prompt_past_the_models_context_is_400(stack):
    _, key = await stack.consumer()
    async with stack.client(key) as c:
        err = _error(await c.post("/v1/completions", json={"model": LLM, "prompt": "word " * 4000,
                                                          "max_tokens": 10}), 400)
    assert err["code"] == "context_length_exceeded"


async def test_wrong_method_is_405_and_unknown_route_404(stack):
    _, key = await stack.consumer()
    async with stack.client(key) as c:
        r = await c.get("/v1/chat/completions")
        assert _error(r, 405)["code"] == "method_not_allowed" and "POST" in r.headers["allow"]
        assert _error(await c.delete("/v1/account"), 405)
        assert _error(await c.get("/v1/nothing-here"), 404)["code"] == "unknown_route"


async def test_a_bad_idempotency_key_is_400(stack):
    _, key = await stack.consumer()
    async with stack.client(key) as c:
        r = await c.post("/v1/completions", json={"model": LLM, "prompt": "x"},
                         headers={"Idempotency-Key": "has space"})
    _error(r, 400, "Idempotency-Key")


@pytest.mark.parametrize("params, param", [
    ({"since": "yesterday"}, "since"), ({"since": "2030-01-01T00:00:00Z", "until": "2029-01-01T00:00:00Z"}, "until"),
    ({"bucket": "fortnight"}, "bucket"), ({"bucket": "5"}, "bucket"), ({"group_by": "colour"}, "group_by"),
    ({"limit": "0"}, "limit"), ({"limit": "5000"}, "limit"), ({"cursor": "!!"}, None),
    ({"account_id": "not-a-uuid"}, "account_id"),
])
async def test_bad_usage_query_parameters_are_400(stack, params, param):
    _, key = await stack.consumer()
    async with stack.client(key) as c:
        _error(await c.get("/v1/account/usage", params=params), 400, param)


async def test_bad_admin_bodies_are_400(stack):
    async with stack.client(stack.admin_key) as c:
        for body, param in (({"kind": "robot", "name": "a"}, "kind"), ({"kind": "consumer"}, "name"),
                            ({"kind": "consumer", "name": "has space"}, "name"),
                            ({"kind": "consumer", "name": "x" * 101}, "name"),
                            ({"kind": "consumer", "name": "a", "extra": 1}, "extra")):
            _error(await c.post("/v1/admin/accounts", json=body), 400, param)
        _error(await c.post("/v1/admin/keys", json={"scope": "root"}), 400, "scope")
        _error(await c.post("/v1/admin/keys", json={"scope": "consumer"}), 400, "account_id")
        _error(await c.post("/v1/admin/keys", json={"scope": "admin", "account_id": str(uuid.uuid4())}), 400)
        _error(await c.post("/v1/admin/keys", json={"scope": "consumer", "account_id": str(uuid.uuid4())}), 404)
        _error(await c.post("/v1/admin/keys", json={"scope": "provider", "account_id": stack.provider_account,
                                                    "rate_per_s": -1}), 400, "rate_per_s")
        consumer, _ = await stack.consumer()
        r = await c.post("/v1/admin/keys", json={"scope": "provider", "account_id": consumer})
        assert _error(r, 400)["code"] == "wrong_account_kind"
        assert (await c.delete("/v1/admin/keys/not-a-key")).status_code == 404


async def test_top_ups_and_payouts_check_amounts_kinds_and_idempotency(stack):
    consumer, key = await stack.consumer(credits=0)
    async with stack.client(stack.admin_key) as c:
        topup = f"/v1/admin/accounts/{consumer}/topup"
        for body, param in (({"amount_micros": 0, "idempotency_key": "k"}, "amount_micros"),
                            ({"amount_micros": -5, "idempotency_key": "k"}, "amount_micros"),
                            ({"amount_micros": 1.5, "idempotency_key": "k"}, "amount_micros"),
                            ({"amount_micros": 10}, "idempotency_key"),
                            ({"amount_micros": 10, "idempotency_key": ""}, "idempotency_key")):
            _error(await c.post(topup, json=body), 400, param)
        assert (await c.post(topup, json={"amount_micros": 500, "idempotency_key": "k1"})).json()["status"] == "applied"
        again = await c.post(topup, json={"amount_micros": 500, "idempotency_key": "k1"})
        assert again.json()["status"] == "already_applied"
        _error(await c.post(topup, json={"amount_micros": 501, "idempotency_key": "k1"}), 409, "idempotency_key")
        _error(await c.post(f"/v1/admin/accounts/{uuid.uuid4()}/topup",
                            json={"amount_micros": 5, "idempotency_key": "x"}), 404)
        _error(await c.post("/v1/admin/accounts/nope/topup", json={"amount_micros": 5, "idempotency_key": "x"}), 400)
        payout = f"/v1/admin/accounts/{stack.provider_account}/payout"
        _error(await c.post(f"/v1/admin/accounts/{stack.provider_account}/topup",
                            json={"amount_micros": 5, "idempotency_key": "x"}), 400)
        _error(await c.post(f"/v1/admin/accounts/{consumer}/payout",
                            json={"amount_micros": 5, "idempotency_key": "x"}), 400)
        _error(await c.post(payout, json={"amount_micros": 10**11, "idempotency_key": "too-much"}), 402)
    assert (await stack.account(key))["available_micros"] == 500


async def test_a_refused_account_creation_leaves_nothing_usable(stack, db_url):
    """A name taken in the registry: 409, no gateway account, no key possible."""
    p = stack.parts
    async with open_channel(f"127.0.0.1:{p['registry'].port}", token=TOKEN) as ch:
        await registry_pb2_grpc.RegistryServiceStub(ch).CreateProvider(
            rpb.CreateProviderRequest(name="taken", ledger_account_id=uuid.uuid4().bytes))
    async with stack.client(stack.admin_key) as c:
        r = await c.post("/v1/admin/accounts", json={"kind": "provider", "name": "taken"})
        assert _error(r, 409)["code"] == "account_exists"
        conn = await asyncpg.connect(db_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM gateway.accounts WHERE name = 'taken'") == 0
        finally:
            await conn.close()
        # The empty ledger account the attempt left cannot be given a key.
        async with open_channel(f"127.0.0.1:{p['ledger'].port}", token=TOKEN) as ch:
            acct = (await ledger_pb2_grpc.LedgerServiceStub(ch).ResolveAccount(
                lpb.ResolveAccountRequest(name="provider:taken"))).account
        assert acct.credits_posted == 0
        r = await c.post("/v1/admin/keys", json={"scope": "provider", "account_id": str(uuid.UUID(bytes=acct.id))})
        _error(r, 404)
        # A name taken in the gateway: 409 again, nothing new.
        assert (await c.post("/v1/admin/accounts", json={"kind": "consumer", "name": "twice"})).status_code == 201
        assert _error(await c.post("/v1/admin/accounts", json={"kind": "consumer", "name": "twice"}),
                      409)["code"] == "account_exists"
