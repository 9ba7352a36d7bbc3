"""The web console (/console) in headless chromium against the real stack:
sign-in, the provider's earnings equal to the REST API's and drawn, a node's
state change shown without a reload, a partner's key made, used with the
openai client and revoked, scopes enforced, security headers, no console
errors, and axe-core's accessibility check on every view."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import openai
import pytest

from idlegrid.demo import ECHO_MODEL_NAME, LLM_MODEL_NAME
from tests.harness.polling import eventually

pytestmark = pytest.mark.slow
WAIT_S = 60.0  # a bound on each wait, never a threshold
FIELDS = ("balance_micros", "held_micros", "earned_micros", "voided_micros", "pending_micros", "paid_out_micros")


async def _jobs(stack, key: str, n: int = 2) -> None:
    """Real jobs: chat completions and tensor inferences."""
    async with stack.client(key) as c:
        for i in range(n):
            r = await c.post("/v1/chat/completions", json={
                "model": LLM_MODEL_NAME, "max_tokens": 4, "messages": [{"role": "user", "content": f"Hi {i}"}]})
            assert r.status_code == 200, r.text
            r = await c.post(f"/v2/models/{ECHO_MODEL_NAME}/infer", json={
                "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
            assert r.status_code == 200, r.text


async def _figures(page, selector: str) -> dict[str, int]:
    return await page.eval_on_selector_all(
        f"{selector} [data-field]", "els => Object.fromEntries(els.map(e => [e.dataset.field, +e.dataset.micros]))")


def _clean(violations: list[dict]) -> list[dict]:
    return [v for v in violations if v["impact"] in ("serious", "critical")]


async def test_every_console_response_carries_the_security_headers(stack):
    async with stack.client() as c:
        pages = [await c.get(p) for p in ("/console", "/console/partner", "/console/provider", "/console/admin",
                                          "/console/static/console.js", "/console/static/nope.js",
                                          "/console/fragments/partner-balance", "/console/nope")]
    for r in pages:
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], r.url
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
    assert [r.status_code for r in pages] == [200, 200, 200, 200, 200, 404, 200, 404]
    assert "no API key" in pages[6].text  # a fragment is the REST answer: without a key, 401 shown
    for r in pages[:4]:
        assert "<script>" not in r.text and " on" + "click=" not in r.text and "https://" not in r.text


async def test_a_provider_sees_earnings_equal_to_the_api_and_a_drawn_chart(stack, watched):
    _, consumer_key = await stack.consumer(50_000_000)
    await _jobs(stack, consumer_key)
    await stack.settled_account(consumer_key)
    want = await stack.quiet_earnings()
    page = watched.page
    await watched.sign_in(stack.url, stack.provider_key, "provider")

    async def shown() -> dict | None:
        got = await _figures(page, "#summary")
        return got if got == {k: want[k] for k in FIELDS} else None

    await eventually(shown, what="the console's earnings to equal GET /v1/provider/earnings", timeout_s=WAIT_S)
    assert want["earned_micros"] > 0
    chart = page.locator("#earnings-chart")
    await eventually(lambda: chart.evaluate("e => +(e.dataset.points || 0) > 0 && !!e.querySelector('canvas')"),
                     what="the earnings chart to draw", timeout_s=WAIT_S)
    drawn = await page.evaluate("""() => { const c = document.querySelector('#earnings-chart canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
    assert drawn > 0
    rows = await page.locator("#earnings-table tbody tr").count()
    assert rows >= 1  # the chart's text alternative
    await page.locator("#jobs tbody tr").first.wait_for()
    assert await page.locator("#nodes [data-state='ready']").count() == 1
    await page.get_by_role("textbox", name="Model").fill(ECHO_MODEL_NAME)  # the line items, filtered, as CSV
    async with page.expect_download() as dl:
        await page.get_by_role("button", name="Download CSV").click()
    saved = await (await dl.value).path()
    lines = (await asyncio.to_thread(Path(saved).read_text)).splitlines()
    assert lines[0].startswith("job_id,") and len(lines) == 1 + 2  # two echo jobs
    assert all(f",{ECHO_MODEL_NAME}," in line for line in lines[1:])
    await watched.shot("console-provider")
    assert _clean(await watched.axe()) == []


async def test_a_partner_makes_a_key_uses_it_sees_usage_and_revokes_it(stack, watched):
    _, key = await stack.consumer(50_000_000)
    page = watched.page
    await watched.sign_in(stack.url, key, "partner")
    await page.get_by_role("button", name="Create a key").click()
    new_key = (await page.locator("#new-key-value").text_content()).strip()
    assert new_key.startswith("ig_") and new_key != key
    key_id = new_key.split("_")[1]
    await page.locator(f"#keys tr[data-key-id='{key_id}']").wait_for()
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=new_key, max_retries=0, timeout=120)
    reply = await asyncio.to_thread(lambda: client.chat.completions.create(
        model=LLM_MODEL_NAME, max_tokens=4, messages=[{"role": "user", "content": "Hello"}]))
    assert reply.usage.cost_micros > 0

    async def spent() -> bool:
        return (await _figures(page, "#balance")).get("spent_micros", 0) > 0

    await eventually(spent, what="the partner's spend to show", timeout_s=WAIT_S)
    await eventually(lambda: page.locator("#usage-chart").evaluate("e => +(e.dataset.points || 0) > 0"),
                     what="the usage chart to draw", timeout_s=WAIT_S)
    assert await page.locator("#usage-table tbody tr").count() >= 1
    assert await page.locator("#transactions tbody tr").count() >= 1
    # The screenshot (docs/console-partner.png) shows where the secret appears, not the secret.
    await page.locator("#new-key-value").evaluate("e => { e.textContent = 'ig_<key id>_<secret, shown once>'; }")
    await watched.shot("console-partner")
    assert _clean(await watched.axe()) == []
    await page.get_by_role("button", name=f"Revoke key {key_id}").click()
    await page.locator(f"#keys tr[data-key-id='{key_id}']").get_by_text("revoked").wait_for()
    with pytest.raises(openai.AuthenticationError) as e:
        await asyncio.to_thread(lambda: client.chat.completions.create(
            model=LLM_MODEL_NAME, max_tokens=4, messages=[{"role": "user", "content": "Hello"}]))
    assert e.value.status_code == 401
    assert await page.evaluate("() => sessionStorage.getItem('idlegrid.key')") == key
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{stack.url}/console")
    assert await page.evaluate("() => sessionStorage.getItem('idlegrid.key')") is None
    assert key not in page.url


@pytest.mark.parametrize("view", ["provider", "admin"])
async def test_a_consumer_key_cannot_open_the_provider_or_admin_view(stack, watched, view):
    _, key = await stack.consumer(1_000_000)
    page = watched.page
    await watched.sign_in(stack.url, key, "partner")
    await page.goto(f"{stack.url}/console/{view}")
    denied = page.locator("#denied")
    await denied.wait_for(state="visible")
    assert f"cannot open the {view} view" in await denied.text_content()
    assert await page.locator("#content").is_hidden()
    assert await page.locator(f"[data-needs='{view}']").is_hidden()
    # The REST routes say no as well: a fragment asked with this key shows the 403.
    async with stack.client(key) as c:
        r = await c.get(f"/console/fragments/{view}-nodes")
    assert 'data-status="403"' in r.text


async def test_an_admin_sees_accounts_limits_and_every_nodes_state(stack, watched):
    page = watched.page
    await watched.sign_in(stack.url, stack.admin_key, "admin")
    await page.locator("#accounts").get_by_text(stack.provider_account).wait_for()
    await page.locator(f"#admin-nodes [data-node-id='{stack.node_id.hex()}']").wait_for()
    assert "per call" in await page.locator("#limits").text_content()
    await watched.shot("console-admin")
    assert _clean(await watched.axe()) == []
    account, key = await stack.consumer(0)  # a top-up through the form, within the caps
    await page.get_by_role("textbox", name="Account id").fill(account)
    await page.get_by_role("textbox", name="Amount (credits)").fill("1.5")
    await page.get_by_role("button", name="Apply").click()
    await page.locator("#money-status").get_by_text("Done").wait_for()
    assert (await stack.account(key))["available_micros"] == 1_500_000
    await page.set_viewport_size({"width": 390, "height": 844})  # a phone: the page reflows, wide tables scroll
    assert await page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


async def test_a_nodes_state_change_appears_without_a_reload(stack, watched):
    page = watched.page
    await watched.sign_in(stack.url, stack.provider_key, "provider")
    node = stack.stack.nodes["a"]
    # The agent's idle loop would undo a pause its owner did not ask for
    # (services/node/pausing.py); here the test is the owner.
    await node.agent.pausing.stop()
    card = page.locator(f"#nodes [data-node-id='{node.node_id.hex()}']")
    await card.and_(page.locator("[data-state='ready']")).wait_for()
    url = page.url
    detail = f"console test {uuid.uuid4().hex[:6]}"
    await node.agent.set_paused(True, detail)
    try:
        async with stack.client(stack.provider_key) as c:
            api = (await c.get("/v1/provider/nodes")).json()["data"]
        assert [(n["state"], n["state_detail"]) for n in api] == [("paused", detail)], api
        await page.locator("#nodes").get_by_text(detail).wait_for(timeout=WAIT_S * 1000)
        assert await card.get_attribute("data-state") != "ready"
        assert page.url == url  # no navigation happened
    finally:
        await node.agent.set_paused(False, "")
    await card.and_(page.locator("[data-state='ready']")).wait_for(timeout=WAIT_S * 1000)
    await stack.stack.routable(node)
