"""API keys: scopes, revocation that takes effect at once (on this replica
and on another), keys that never reach a log line, and rate limits that hold
across replicas."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from idlegrid.gateway import service as gateway_service
from idlegrid.gateway.settings import GatewaySettings
from tests.harness import eventually
from tests.harness.logs import captured_logs

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

LLM = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
async def replica(stack, config):
    """A second gateway on the same database and backends."""
    p = stack.parts
    gw = await gateway_service.start(
        config, port=0, database_url=stack.db_url, ledger_addr=f"127.0.0.1:{p['ledger'].port}",
        scheduler_addr=f"127.0.0.1:{p['scheduler'].port}", metering_addr=f"127.0.0.1:{p['metering'].port}",
        registry_addr=f"127.0.0.1:{p['registry'].port}", settings=GatewaySettings())
    yield gw
    await gw.stop(1)


async def _get(url: str, key: str | None, path: str, **kw) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as c:
        return await c.get(path, **kw)


async def test_a_consumer_key_reads_only_its_own_account(stack):
    mine, key = await stack.consumer()
    other, _ = await stack.consumer()
    assert (await _get(stack.url, key, "/v1/account")).json()["account_id"] == mine
    assert (await _get(stack.url, key, "/v1/account", params={"account_id": mine})).status_code == 200
    for path in ("/v1/account", "/v1/account/usage", "/v1/account/transactions"):
        r = await _get(stack.url, key, path, params={"account_id": other})
        assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_account", path
    # An admin names any account.
    r = await _get(stack.url, stack.admin_key, "/v1/account", params={"account_id": other})
    assert r.status_code == 200 and r.json()["account_id"] == other


@pytest.mark.parametrize("path", ["/v1/provider/earnings", "/v1/provider/nodes"])
async def test_a_consumer_key_cannot_read_provider_routes(stack, path):
    _, key = await stack.consumer()
    r = await _get(stack.url, key, path)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    r = await _get(stack.url, key, path, params={"account_id": stack.provider_account})
    assert r.status_code == 403


async def test_only_admin_keys_reach_admin_routes(stack):
    _, key = await stack.consumer()
    for k in (key, stack.provider_key):
        async with stack.client(k) as c:
            assert (await c.post("/v1/admin/accounts", json={"kind": "consumer", "name": "x"})).status_code == 403
            assert (await c.post("/v1/admin/keys", json={"scope": "admin"})).status_code == 403
            assert (await c.delete("/v1/admin/keys/" + "0" * 32)).status_code == 403
    r = await _get(stack.url, stack.provider_key, "/v1/account")
    assert r.status_code == 403


@pytest.mark.parametrize("header", [None, "Bearer", "Basic abc", "Bearer ig_nothex_x", "Bearer sk-abc",
                                    "Bearer ig_" + "0" * 32 + "_" + "A" * 43])
async def test_missing_malformed_or_unknown_keys_are_401(stack, header):
    headers = {"authorization": header} if header else {}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers) as c:
        r = await c.get("/v1/account")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["type"] == "authentication_error"


async def test_a_wrong_secret_for_a_cached_key_is_401(stack):
    _, key = await stack.consumer()
    assert (await _get(stack.url, key, "/v1/account")).status_code == 200  # now cached
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert (await _get(stack.url, forged, "/v1/account")).status_code == 401


async def test_a_revoked_key_stops_working_at_once_on_every_replica(stack, replica):
    _, key = await stack.consumer()
    assert replica.gw.auth.listening_event.is_set()
    assert (await _get(stack.url, key, "/v1/account")).status_code == 200
    assert (await _get(replica.url, key, "/v1/account")).status_code == 200  # cached there too
    key_id = key.split("_")[1]
    async with stack.client(stack.admin_key) as c:
        r = await c.delete(f"/v1/admin/keys/{key_id}")
        assert r.status_code == 200 and r.json()["revoked"] is True
        assert (await c.delete(f"/v1/admin/keys/{key_id}")).status_code == 404
    assert (await _get(stack.url, key, "/v1/account")).status_code == 401  # the replica that revoked: at once

    async def refused_by_the_other() -> bool:  # the other: on NOTIFY
        return (await _get(replica.url, key, "/v1/account")).status_code == 401

    await eventually(refused_by_the_other, what="the other replica to refuse the revoked key")


async def test_keys_and_tokens_never_appear_in_logs(stack):
    with captured_logs() as buf:
        async with stack.client(stack.admin_key) as c:
            r = await c.post("/v1/admin/accounts", json={"kind": "provider", "name": "logged-provider"})
            token = r.json()["provider_token"]
            account = (await c.post("/v1/admin/accounts", json={"kind": "consumer", "name": "logged"})).json()
            await c.post(f"/v1/admin/accounts/{account['account_id']}/topup",
                         json={"amount_micros": 1_000_000, "idempotency_key": "logged"})
            key = (await c.post("/v1/admin/keys", json={"account_id": account["account_id"],
                                                        "scope": "consumer"})).json()["key"]
        async with stack.client(key) as c:
            assert (await c.post("/v1/chat/completions", json={
                "model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})).status_code == 200
            await c.post("/v1/chat/completions", content=b"{broken")
            await c.get("/v1/provider/earnings")
        forged = key[:-3] + "xyz"
        await _get(stack.url, forged, "/v1/account")
        async with stack.client(stack.admin_key) as c:
            await c.delete(f"/v1/admin/keys/{key.split('_')[1]}")
        await _get(stack.url, key, "/v1/account")
        # Each request's canonical line is written once it is answered: wait for all ten.
        await eventually(lambda: buf.getvalue().count('"event": "http"') >= 10, what="every request's log line")
    text = buf.getvalue()
    assert '"route": "/v1/chat/completions"' in text  # the capture works
    for secret in (key, key.split("_", 2)[2], forged, stack.admin_key, stack.admin_key.split("_", 2)[2],
                   token, token.split("_", 2)[2]):
        assert secret not in text


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after_on_every_replica(stack, replica):
    _, key = await stack.consumer(rate_per_s=1, burst=2)
    _, other = await stack.consumer()
    codes = [(await _get(u, key, "/v1/account")).status_code for u in (stack.url, replica.url)]
    assert codes == [200, 200]
    for url in (stack.url, replica.url):  # the allowance is shared: both replicas refuse
        r = await _get(url, key, "/v1/account")
        assert r.status_code == 429, url
        assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert (await _get(stack.url, other, "/v1/account")).status_code == 200  # per key

    async def admitted_again() -> bool:  # the allowance refills with time
        return (await _get(stack.url, key, "/v1/account")).status_code == 200

    await eventually(admitted_again, what="the key's allowance to refill", every_s=0.1)


async def test_leased_allowance_never_lets_a_busy_key_past_its_limit_across_replicas(stack, replica):
    """With rate 20/s and burst 8 each replica leases two requests at a time;
    whatever the timing, no more than burst + rate x elapsed get through."""
    _, key = await stack.consumer(rate_per_s=20, burst=8)
    start = time.monotonic()
    codes = await asyncio.gather(*(_get(u, key, "/v1/account") for u in (stack.url, replica.url) * 20))
    elapsed = time.monotonic() - start
    admitted = sum(r.status_code == 200 for r in codes)
    assert {r.status_code for r in codes} <= {200, 429}
    assert 1 <= admitted <= 8 + 20 * elapsed + 1e-9, (admitted, elapsed)
