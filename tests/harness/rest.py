"""The marketplace as partners and providers see it: a whole stack with the
gateway, a provider made through the gateway's admin API, one of its nodes
READY, and the REST calls the gateway tests repeat."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx

from idlegrid.demo import ECHO_MODEL_NAME, LLM_MODEL_NAME
from tests.harness.polling import eventually
from tests.harness.stack import Stack

CLIENT_TIMEOUT_S = 120.0
SETTLE_WAIT_S = 60.0  # a bound on the wait, never a threshold


@dataclass
class RestStack:
    """``stack``: the services; the rest is what the gateway tests call."""

    stack: Stack
    admin_key: str
    provider_account: str
    provider_id: str
    provider_key: str
    node_id: bytes = b""
    _consumers: int = 0

    @property
    def url(self) -> str:
        return self.stack.addrs["gateway"]

    @property
    def gateway(self):
        return self.stack.gateway_srv

    @property
    def parts(self) -> dict:
        """The running services by name."""
        return self.stack.servers

    @property
    def db_url(self) -> str:
        return self.stack.db_url

    def client(self, key: str | None = None, **kw) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=CLIENT_TIMEOUT_S, **kw)

    async def admin(self, method: str, path: str, **kw) -> httpx.Response:
        async with self.client(self.admin_key) as c:
            return await c.request(method, path, **kw)

    async def consumer(self, credits: int = 10_000_000, *, rate_per_s: int | None = None,
                       burst: int | None = None) -> tuple[str, str]:
        """A new consumer account with ``credits`` micro-credits: (account id, key)."""
        self._consumers += 1
        r = await self.admin("POST", "/v1/admin/accounts", json={
            "kind": "consumer", "name": f"c{self._consumers}-{uuid.uuid4().hex[:8]}"})
        assert r.status_code == 201, r.text
        account = r.json()["account_id"]
        if credits:
            r = await self.admin("POST", f"/v1/admin/accounts/{account}/topup",
                                 json={"amount_micros": credits, "idempotency_key": f"t-{account}"})
            assert r.status_code == 200, r.text
        body: dict = {"account_id": account, "scope": "consumer"}
        if rate_per_s is not None:
            body.update(rate_per_s=rate_per_s, burst=burst or 1)
        r = await self.admin("POST", "/v1/admin/keys", json=body)
        assert r.status_code == 201, r.text
        return account, r.json()["key"]

    async def account(self, key: str) -> dict:
        async with self.client(key) as c:
            r = await c.get("/v1/account")
        assert r.status_code == 200, r.text
        return r.json()

    async def settled_account(self, key: str) -> dict:
        """The account once metering has settled every job (no credits held)."""
        async def settled() -> dict | None:
            a = await self.account(key)
            return a if a["held_micros"] == 0 else None

        return await eventually(settled, what="the account's jobs to settle", timeout_s=SETTLE_WAIT_S)

    async def earnings(self) -> dict:
        async with self.client(self.provider_key) as c:
            r = await c.get("/v1/provider/earnings")
        assert r.status_code == 200, r.text
        return r.json()

    async def quiet_earnings(self) -> dict:
        """The provider's earnings once nothing is pending (earlier jobs settled:
        with credit leases, every lease cleared and its window on the ledger,
        as metering marks records settled before the ledger applies them)."""
        await self.stack.settled()

        async def quiet() -> dict | None:
            e = await self.earnings()
            return e if e["pending_micros"] == 0 else None

        return await eventually(quiet, what="the provider's earnings to settle", timeout_s=SETTLE_WAIT_S)


async def open_rest(stack: Stack, *, node_config) -> RestStack:
    """An admin key, a provider (account, key) made through the admin API,
    and node ``a`` of that provider priced by ``node_config``, READY and seen
    by the gateway."""
    gw = stack.gateway_srv
    admin_key = (await gw.create_key(scope="admin"))[1]
    async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {admin_key}"}) as c:
        r = await c.post("/v1/admin/accounts", json={"kind": "provider", "name": f"p-{uuid.uuid4().hex[:8]}"})
        assert r.status_code == 201, r.text
        provider = r.json()
        r = await c.post("/v1/admin/keys", json={"account_id": provider["account_id"], "scope": "provider"})
        assert r.status_code == 201, r.text
        provider_key = r.json()["key"]
    node = await stack.add_node("a", node_config=node_config, provider_token=provider["provider_token"])
    serving = gw.gw.backends.nodes.serving
    await eventually(lambda: serving(ECHO_MODEL_NAME) and serving(LLM_MODEL_NAME),
                     what="the gateway to see the node")
    return RestStack(stack, admin_key, provider["account_id"], provider["provider_id"], provider_key,
                     node.node_id)
