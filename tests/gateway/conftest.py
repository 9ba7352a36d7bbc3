"""The whole marketplace for gateway tests, every part real and in this
process (except Triton, a child process): ledger, metering, registry,
scheduler and gateway on a fresh database per module, one demo Triton
(SmolLM2 and echo) for the session, registered as a READY node of a provider
made through the gateway's admin API."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import structlog

from idlegrid.common import logs
from idlegrid.demo import ECHO_MODEL_NAME, LLM_MODEL_NAME, DemoTriton, start_demo_triton
from idlegrid.gateway import service as gateway_service
from idlegrid.gateway.settings import GatewaySettings
from idlegrid.ledger import service as ledger_service
from idlegrid.metering import service as metering_service
from idlegrid.node import config_file
from idlegrid.node.agent import READY, AgentOptions, NodeAgent
from idlegrid.registry import service as registry_service
from idlegrid.scheduler import service as scheduler_service

# Loggers must not keep the configuration they first saw, so that a test can
# capture everything that is logged (see captured_logs).
structlog.configure(cache_logger_on_first_use=False)

SETTLE_TIMEOUT_S = 20.0
# Prices in micro-credits: high enough that the platform fee is never zero.
LLM_PRICE_IN, LLM_PRICE_OUT, ECHO_PRICE = 10_000_000, 20_000_000, 1_000


def node_config() -> config_file.NodeConfig:
    demo = config_file.demo()
    llm, echo = demo.models[LLM_MODEL_NAME], demo.models[ECHO_MODEL_NAME]
    return dataclasses.replace(demo, models={
        LLM_MODEL_NAME: dataclasses.replace(llm, price_per_million_input_tokens=LLM_PRICE_IN,
                                            price_per_million_output_tokens=LLM_PRICE_OUT),
        ECHO_MODEL_NAME: dataclasses.replace(echo, price_per_request=ECHO_PRICE)})


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Everything logged meanwhile, structlog (debug and up) and stdlib alike."""
    buf = io.StringIO()
    logs.configure(fmt="json", level="debug", stream=buf)
    structlog.configure(cache_logger_on_first_use=False)
    handler = logging.StreamHandler(buf)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        logs.configure(fmt="console", level="warning")
        structlog.configure(cache_logger_on_first_use=False)


@pytest.fixture(scope="session")
def triton() -> Iterator[DemoTriton]:
    node = start_demo_triton()
    yield node
    node.stop()


@dataclass
class Stack:
    url: str
    admin_key: str
    db_url: str
    gateway: gateway_service.RunningGateway
    provider_account: str
    provider_id: str
    provider_key: str
    node_id: bytes
    parts: dict = field(default_factory=dict)
    _n: int = 0

    def client(self, key: str | None = None, **kw) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=120, **kw)

    async def admin(self, method: str, path: str, **kw) -> httpx.Response:
        async with self.client(self.admin_key) as c:
            return await c.request(method, path, **kw)

    async def consumer(self, credits: int = 10_000_000, *, rate_per_s: int | None = None,
                       burst: int | None = None) -> tuple[str, str]:
        """A new consumer account with ``credits`` micro-credits: (account id, key)."""
        self._n += 1
        r = await self.admin("POST", "/v1/admin/accounts", json={"kind": "consumer",
                                                                 "name": f"c{self._n}-{uuid.uuid4().hex[:8]}"})
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
        deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT_S
        while True:
            a = await self.account(key)
            if a["held_micros"] == 0 or asyncio.get_running_loop().time() > deadline:
                return a
            await asyncio.sleep(0.05)

    async def earnings(self) -> dict:
        async with self.client(self.provider_key) as c:
            r = await c.get("/v1/provider/earnings")
        assert r.status_code == 200, r.text
        return r.json()


async def start_stack(config, db_url: str, triton: DemoTriton, *, settings: GatewaySettings | None = None):
    """Starts every service; returns (stack, stop)."""
    stops = []
    try:
        led = await ledger_service.start(config, port=0, database_url=db_url, sweep_interval_s=0.2)
        stops.append(lambda: led.stop(1))
        la = f"127.0.0.1:{led.port}"
        met = await metering_service.start(config, port=0, database_url=db_url, ledger_addr=la, poll_s=0.1)
        stops.append(lambda: met.stop(1))
        ma = f"127.0.0.1:{met.port}"
        reg = await registry_service.start(config, port=0, database_url=db_url)
        stops.append(lambda: reg.stop(1))
        ra = f"127.0.0.1:{reg.port}"
        sch = await scheduler_service.start(config, port=0, ledger_addr=la, metering_addr=ma, registry_addr=ra)
        stops.append(lambda: sch.stop(1))
        sa = f"127.0.0.1:{sch.port}"
        gw = await gateway_service.start(config, port=0, database_url=db_url, ledger_addr=la, scheduler_addr=sa,
                                         metering_addr=ma, registry_addr=ra,
                                         settings=settings or GatewaySettings())
        stops.append(lambda: gw.stop(1))
        admin_key = (await gw.create_key(scope="admin"))[1]
        url = gw.url
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {admin_key}"}) as c:
            r = await c.post("/v1/admin/accounts", json={"kind": "provider", "name": f"p-{uuid.uuid4().hex[:8]}"})
            assert r.status_code == 201, r.text
            provider = r.json()
            r = await c.post("/v1/admin/keys", json={"account_id": provider["account_id"], "scope": "provider"})
            assert r.status_code == 201, r.text
            provider_key = r.json()["key"]
        cfg = await asyncio.to_thread(node_config)
        node = NodeAgent(AgentOptions(registry_addr=ra, provider_token=provider["provider_token"],
                                      triton_url=triton.grpc_url, metrics_url=triton.metrics_url, node_config=cfg))
        stops.append(node.stop)
        await node.start()
        await node.wait_for(READY, timeout_s=120)
        node_id = node.node_id
        deadline = asyncio.get_running_loop().time() + 30
        while not gw.gw.backends.nodes.serving(ECHO_MODEL_NAME) or not gw.gw.backends.nodes.serving(LLM_MODEL_NAME):
            assert asyncio.get_running_loop().time() < deadline, "the gateway never saw the node"
            await asyncio.sleep(0.05)
        stack = Stack(url=url, admin_key=admin_key, db_url=db_url, gateway=gw,
                      provider_account=provider["account_id"], provider_id=provider["provider_id"],
                      provider_key=provider_key, node_id=node_id,
                      parts={"ledger": led, "metering": met, "registry": reg, "scheduler": sch, "node": node})
    except BaseException:
        for stop in reversed(stops):
            with contextlib.suppress(Exception):
                await stop()
        raise

    async def stop_all():
        for stop in reversed(stops):
            with contextlib.suppress(Exception):
                await stop()

    return stack, stop_all


@pytest.fixture(scope="module")
async def stack(config, db_url, triton):
    s, stop = await start_stack(config, db_url, triton)
    yield s
    await stop()
