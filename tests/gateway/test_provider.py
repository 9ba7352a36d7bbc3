"""Providers see, to the micro-credit, what they earned and why: settled
earnings, payouts, pending usage, a breakdown by node and by model, per-job
line items (paged), and their nodes."""

from __future__ import annotations

import numpy as np
import pytest

from idlegrid.common.money import split_fee

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

FEE_BPS = 1000


async def _echo(stack, key: str, n: int) -> list[str]:
    jobs = []
    async with stack.client(key) as c:
        for _ in range(n):
            r = await c.post("/v2/models/echo/infer", json={"inputs": [
                {"name": "INPUT0", "shape": [1, 3], "datatype": "FP32", "data": np.ones(3).tolist()}]})
            assert r.status_code == 200, r.text
            jobs.append(r.headers["x-idlegrid-job-id"])
    return jobs


async def _settled_earnings(stack) -> dict:
    return await stack.quiet_earnings()


async def test_earnings_add_up_by_node_by_model_and_per_job(stack):
    before = await _settled_earnings(stack)
    _, key = await stack.consumer()
    jobs = await _echo(stack, key, 3)
    after = await _settled_earnings(stack)
    share, _fee = split_fee(1000, FEE_BPS)
    assert after["earned_micros"] - before["earned_micros"] == 3 * share
    assert after["balance_micros"] == after["earned_micros"] - after["paid_out_micros"]
    node = {n["node_id"]: n for n in after["by_node"]}[stack.node_id.hex()]
    echo = {m["model"]: m for m in after["by_model"]}["echo"]
    assert node["earned_micros"] == after["earned_micros"] and echo["requests"] >= 3
    assert node["pending_micros"] == 0
    # Line items, newest first, one page at a time.
    seen, cursor = [], None
    async with stack.client(stack.provider_key) as c:
        while True:
            page = (await c.get("/v1/provider/earnings", params={"limit": 2, **({"cursor": cursor} if cursor
                                                                                  else {})})).json()["jobs"]
            seen += page["data"]
            cursor = page["next_cursor"]
            if not cursor:
                break
    mine = [j for j in seen if j["job_id"] in jobs]
    assert len(mine) == 3
    assert all(j["provider_micros"] == share and j["fee_micros"] == 1000 - share and j["settlement"] == "settled"
               for j in mine)


async def test_payouts_lower_the_balance_and_refuse_more_than_it(stack):
    _, key = await stack.consumer()
    await _echo(stack, key, 2)
    e = await _settled_earnings(stack)
    balance = e["balance_micros"]
    assert balance > 0
    async with stack.client(stack.admin_key) as c:
        url = f"/v1/admin/accounts/{stack.provider_account}/payout"
        r = await c.post(url, json={"amount_micros": balance + 1, "idempotency_key": "too-much"})
        assert r.status_code == 402
        r = await c.post(url, json={"amount_micros": balance - 1, "idempotency_key": "p1"})
        assert r.status_code == 200 and r.json()["account"]["available_micros"] == 1
    after = await stack.earnings()
    assert after["paid_out_micros"] == e["paid_out_micros"] + balance - 1 and after["balance_micros"] == 1


async def test_nodes_lists_the_providers_node_with_its_models(stack):
    async with stack.client(stack.provider_key) as c:
        r = await c.get("/v1/provider/nodes")
    assert r.status_code == 200
    (node,) = r.json()["data"]
    assert node["node_id"] == stack.node_id.hex() and node["state"] == "ready"
    assert {m["name"] for m in node["models"]} == {"smollm2-135m-instruct", "echo"}
    assert all(m["verified"] for m in node["models"])


async def test_an_admin_reads_a_providers_earnings_by_account_id(stack):
    async with stack.client(stack.admin_key) as c:
        r = await c.get("/v1/provider/earnings", params={"account_id": stack.provider_account})
        nodes = await c.get("/v1/provider/nodes", params={"account_id": stack.provider_account})
    assert r.status_code == 200 and r.json()["account_id"] == stack.provider_account
    assert nodes.status_code == 200 and len(nodes.json()["data"]) == 1
