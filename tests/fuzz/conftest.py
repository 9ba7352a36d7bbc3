"""A whole marketplace for the fuzzer, on loopback: ledger, metering,
registry, scheduler and gateway (tests/harness), no node (inference answers
404 or 503, both declared), and a key of every scope. The gateway's per-IP
and per-key limits are raised far above what a fuzz run sends, so that a 429
never hides a bug."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import httpx
import pytest

from idlegrid.gateway.settings import GatewaySettings
from tests.harness.stack import start_stack

PARTS = ("ledger", "metering", "registry", "scheduler", "gateway")
# Limits out of the fuzzer's way (a 429 would mask what the request found),
# and no negative cache, so every unknown key reaches the database; everything
# else is the gateway's default.
SETTINGS = GatewaySettings(rate_per_s=1_000_000, burst=10_000_000, ip_rate_per_s=1_000_000,
                           ip_burst=10_000_000, key_concurrency_max=1_000, concurrency_max=10_000,
                           unknown_key_ttl_ms=0)
CREDITS = 10**12


@dataclass(frozen=True)
class FuzzTarget:
    """Where the gateway listens and a key of each scope (None: no key)."""

    url: str
    consumer_account: str
    provider_account: str
    keys: dict[str, str | None] = field(repr=False)  # secrets: never in a test report


async def _setup(url: str, admin_key: str) -> FuzzTarget:
    tag = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {admin_key}"}) as c:
        accounts = {}
        for kind in ("consumer", "provider"):
            r = await c.post("/v1/admin/accounts", json={"kind": kind, "name": f"fuzz-{kind}-{tag}"})
            assert r.status_code == 201, r.text
            accounts[kind] = r.json()["account_id"]
        r = await c.post(f"/v1/admin/accounts/{accounts['consumer']}/topup",
                         json={"amount_micros": CREDITS, "idempotency_key": f"fuzz-{tag}"})
        assert r.status_code == 200, r.text
        keys: dict[str, str | None] = {"none": None, "admin": admin_key}
        for kind, account in accounts.items():
            r = await c.post("/v1/admin/keys", json={"scope": kind, "account_id": account})
            assert r.status_code == 201, r.text
            keys[kind] = r.json()["key"]
    return FuzzTarget(url, accounts["consumer"], accounts["provider"], keys)


@pytest.fixture(scope="module")
async def target(config, db_url):
    stack = await start_stack(config, db_url, parts=PARTS, provider=False, gateway_settings=SETTINGS)
    try:
        admin_key = (await stack.gateway_srv.create_key(scope="admin"))[1]
        yield await _setup(stack.addrs["gateway"], admin_key)
    finally:
        await stack.stop()
