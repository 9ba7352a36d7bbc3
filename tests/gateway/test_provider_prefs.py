"""OpenRouter's ``provider`` object at the gateway: in chat and completion
bodies, and on the KServe path as the ``X-Idlegrid-Provider`` header. Node
``a`` (cheap) and node ``dear`` (ten times its prices, another provider)
serve the same models: max_price keeps jobs on the cheap node and is never
exceeded, order/only/ignore/allow_fallbacks steer them, a ceiling no node
meets is a 503 that costs nothing, and bad input is a 400 naming the field.
The books verify at the end."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from idlegrid.demo import ECHO_MODEL_NAME, LLM_MODEL_NAME
from idlegrid.gateway import provider_prefs
from idlegrid.gateway.errors import ApiError
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler.pricing import llm_cost
from tests.gateway.conftest import ECHO_PRICE, LLM_PRICE_IN, LLM_PRICE_OUT, node_config
from tests.harness.polling import eventually

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

DEAR_FACTOR = 10
BETWEEN = {"prompt": 2 * LLM_PRICE_IN, "completion": 2 * LLM_PRICE_OUT}  # above a, below dear
HEADER = "X-Idlegrid-Provider"


def _dear_config():
    base = node_config()
    llm, echo = base.models[LLM_MODEL_NAME], base.models[ECHO_MODEL_NAME]
    return dataclasses.replace(base, labels={"node": "dear"}, models={
        LLM_MODEL_NAME: dataclasses.replace(llm, price_per_million_input_tokens=DEAR_FACTOR * LLM_PRICE_IN,
                                            price_per_million_output_tokens=DEAR_FACTOR * LLM_PRICE_OUT),
        ECHO_MODEL_NAME: dataclasses.replace(echo, price_per_request=DEAR_FACTOR * ECHO_PRICE)})


@pytest.fixture(scope="module")
async def dear(stack) -> bytes:
    """Node ``dear`` of a second provider, READY and seen by the gateway; its node id."""
    r = await stack.admin("POST", "/v1/admin/accounts", json={"kind": "provider",
                                                              "name": f"dear-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    node = await stack.stack.add_node("dear", node_config=_dear_config(), provider_token=r.json()["provider_token"])
    nodes = stack.gateway.gw.backends.nodes
    await eventually(lambda: node.node_id in nodes.nodes and bool(nodes.nodes[node.node_id].models),
                     what="the gateway to see node dear")
    return node.node_id


def _chat(provider: object, *, max_tokens: int = 4) -> dict:
    return {"model": LLM_MODEL_NAME, "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": max_tokens, "temperature": 0, "provider": provider}


def _echo_body() -> dict:
    return {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [[1, 2]]}]}


async def test_max_price_keeps_chats_on_the_cheap_node_and_is_never_exceeded(stack, dear):
    _, key = await stack.consumer(10**10)
    async with stack.client(key) as c:
        for _ in range(6):
            r = await c.post("/v1/chat/completions", json=_chat({"max_price": BETWEEN}))
            assert r.status_code == 200, r.text
            assert r.headers["x-idlegrid-node"] == stack.node_id.hex()
            u = r.json()["usage"]
            assert u["cost_micros"] <= llm_cost(_price(BETWEEN), u["prompt_tokens"], u["completion_tokens"])
        r = await c.post("/v1/completions", json={"model": LLM_MODEL_NAME, "prompt": "Hi", "max_tokens": 3,
                                                   "provider": {"max_price": BETWEEN, "sort": "price"}})
        assert r.status_code == 200 and r.headers["x-idlegrid-node"] == stack.node_id.hex()


def _price(mp: dict) -> rpb.Price:
    return rpb.Price(per_million_input_tokens=mp["prompt"], per_million_output_tokens=mp["completion"])


async def test_order_only_ignore_and_allow_fallbacks_steer_chats(stack, dear):
    _, key = await stack.consumer(10**10)
    a = stack.node_id.hex()
    async with stack.client(key) as c:
        r = await c.post("/v1/chat/completions", json=_chat({"order": [dear.hex()], "allow_fallbacks": False}))
        assert r.status_code == 200 and r.headers["x-idlegrid-node"] == dear.hex()
        r = await c.post("/v1/chat/completions", json=_chat({"only": [str(uuid.UUID(bytes=dear))]}))
        assert r.status_code == 200 and r.headers["x-idlegrid-node"] == dear.hex()
        r = await c.post("/v1/chat/completions", json=_chat({"ignore": [dear.hex()]}))
        assert r.status_code == 200 and r.headers["x-idlegrid-node"] == a
        r = await c.post("/v1/chat/completions", json=_chat({"only": [a], "max_price": {"prompt": 1}}))
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_node_within_max_price"


async def test_a_ceiling_no_node_meets_is_a_503_and_costs_nothing(stack, dear):
    account, key = await stack.consumer(10**6)
    async with stack.client(key) as c:
        for stream in (False, True):
            r = await c.post("/v1/chat/completions", json={**_chat({"max_price": {"completion": 1}}),
                                                           "stream": stream})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "no_node_within_max_price"
    a = await stack.account(key)
    assert (a["spent_micros"], a["held_micros"], a["available_micros"]) == (0, 0, 10**6)


@pytest.mark.parametrize(("provider", "param"), [
    ([], "provider"),
    ({"sort": "fastest"}, "provider.sort"),
    ({"max_price": {"prompt": -1}}, "provider.max_price.prompt"),
    ({"max_price": {"prompt": 1.5}}, "provider.max_price.prompt"),
    ({"max_price": {"image": 1}}, "provider.max_price.image"),
    ({"max_price": 5}, "provider.max_price"),
    ({"order": "abc"}, "provider.order"),
    ({"order": ["not-an-id"]}, "provider.order[0]"),
    ({"ignore": ["ab" * 16 + "\n"]}, "provider.ignore[0]"),
    ({"only": ["ab" * 16] * 65}, "provider.only"),
    ({"allow_fallbacks": "no"}, "provider.allow_fallbacks"),
    ({"quantizations": ["fp8"]}, "provider.quantizations"),
])
async def test_a_bad_provider_object_is_a_400_naming_the_field(stack, provider, param):
    _, key = await stack.consumer(10**6)
    async with stack.client(key) as c:
        r = await c.post("/v1/chat/completions", json=_chat(provider))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    with pytest.raises(ApiError) as e:
        provider_prefs.parse(provider)
    assert e.value.param == param


async def test_the_kserve_header_carries_the_same_controls(stack, dear):
    account, key = await stack.consumer(10**7)
    spent = 0
    async with stack.client(key) as c:
        r = await c.post("/v2/models/echo/infer", json=_echo_body(),
                         headers={HEADER: json.dumps({"max_price": {"request": 2 * ECHO_PRICE}})})
        assert r.status_code == 200 and r.headers["x-idlegrid-node"] == stack.node_id.hex()
        assert r.headers["x-idlegrid-cost-micros"] == str(ECHO_PRICE)
        spent += ECHO_PRICE
        r = await c.post("/v2/models/echo/infer", json=_echo_body(), headers={HEADER: f'{{"only": ["{dear.hex()}"]}}'})
        assert r.status_code == 200 and r.headers["x-idlegrid-node"] == dear.hex()
        assert r.headers["x-idlegrid-cost-micros"] == str(DEAR_FACTOR * ECHO_PRICE)
        spent += DEAR_FACTOR * ECHO_PRICE
        r = await c.post("/v2/models/echo/infer", json=_echo_body(), headers={HEADER: '{"max_price": {"request": 1}}'})
        assert r.status_code == 503 and isinstance(r.json()["error"], str) and "max_price" in r.json()["error"]
        for bad in ("not json", "[]", '{"sort": "cheapest"}'):
            r = await c.post("/v2/models/echo/infer", json=_echo_body(), headers={HEADER: bad})
            assert r.status_code == 400 and isinstance(r.json()["error"], str), (bad, r.text)
    a = await stack.settled_account(key)
    assert a["spent_micros"] == spent


async def test_the_books_verify_after_the_scenarios(stack, dear):
    await stack.stack.check_books()
