"""Cheap refusals at the edge (issue 13): a per-IP limit before
authentication (X-Forwarded-For believed only from trusted proxies), a short
negative cache of unknown keys, database pool acquire timeouts (503 with
Retry-After, never a hang), and a cap on one key's requests in flight.

Each test runs a real gateway on the module's fresh database, with its
backend services down: every refusal here happens before any backend is
asked."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import uuid

import httpx
import pytest

from idlegrid.bench.kit import free_port
from idlegrid.gateway import service as gateway_service
from idlegrid.gateway.edge import client_ip
from idlegrid.gateway.keys import create_key, revoke_key
from idlegrid.gateway.settings import GatewaySettings
from tests.harness.polling import eventually


@pytest.fixture
async def start_gateway(config, db_url):
    """``await start_gateway(**settings)``: a gateway whose backends are
    all down; every one is stopped after the test."""
    started = []

    async def start(**settings):
        dead = {f"{name}_addr": f"127.0.0.1:{free_port()}" for name in ("ledger", "scheduler", "metering",
                                                                          "registry")}
        gw = await gateway_service.start(config, port=0, database_url=db_url, settings=GatewaySettings(**settings),
                                         **dead)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.stop(1)


def client(gw, key: str | None = None, **headers: str) -> httpx.AsyncClient:
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=60)


def unknown_key() -> str:
    return f"ig_{uuid.uuid4().hex}_{'A' * 43}"


def metric(text: str, name: str, label: str) -> float:
    m = re.search(rf'^{name}{{[^}}]*"{label}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


# -- per IP, before authentication ---------------------------------------------

async def test_a_client_ip_over_its_limit_gets_429_before_its_key_is_looked_at(start_gateway):
    """Every request claims another client in X-Forwarded-For; the peer is
    not a trusted proxy, so all of them count against the peer's address."""
    gw = await start_gateway(ip_rate_per_s=1, ip_burst=3)
    async with client(gw) as c:
        answers = [await c.get("/v1/models", headers={"x-forwarded-for": f"203.0.113.{i}"}) for i in range(20)]
        assert [r.status_code for r in answers[:3]] == [401, 401, 401]  # within the burst: authentication
        over = [r for r in answers if r.status_code == 429]
        assert over, "no request was refused"
        err = over[0].json()["error"]
        assert err["code"] == "ip_rate_limit_exceeded" and int(over[0].headers["retry-after"]) >= 1
        assert (await c.get("/healthz")).status_code == 200  # probes are not counted


async def test_x_forwarded_for_is_believed_only_from_trusted_proxies(start_gateway):
    gw = await start_gateway(ip_rate_per_s=1, ip_burst=2,
                             trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))
    async with client(gw) as c:
        codes = [(await c.get("/v1/models", headers={"x-forwarded-for": "203.0.113.5"})).status_code
                 for _ in range(20)]
        assert codes[:2] == [401, 401] and 429 in codes
        other = await c.get("/v1/models", headers={"x-forwarded-for": "203.0.113.6"})
        assert other.status_code == 401  # another client behind the same proxy is not limited


def test_the_client_ip_is_the_right_most_untrusted_hop():
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)

    def scope(peer: str, xff: str | None) -> dict:
        return {"client": (peer, 1234), "headers": [(b"x-forwarded-for", xff.encode())] if xff else []}

    assert client_ip(scope("10.0.0.2", "198.51.100.1, 203.0.113.7, 10.0.0.9"), trusted) == "203.0.113.7"
    assert client_ip(scope("192.0.2.1", "203.0.113.7"), trusted) == "192.0.2.1"  # peer is not a proxy
    assert client_ip(scope("10.0.0.2", None), trusted) == "10.0.0.2"
    assert client_ip(scope("10.0.0.2", "203.0.113.7, garbage"), trusted) == "10.0.0.2"
    assert client_ip(scope("10.0.0.2", "10.0.0.3"), trusted) == "10.0.0.3"
    assert client_ip(scope("127.0.0.1", "203.0.113.7"), ()) == "127.0.0.1"


# -- unknown keys -------------------------------------------------------------

async def test_an_unknown_key_is_refused_from_memory_after_one_lookup(start_gateway):
    gw = await start_gateway(unknown_key_ttl_ms=600_000)
    bad = unknown_key()
    async with client(gw, bad) as c:
        for _ in range(5):
            r = await c.get("/v1/models")
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        text = (await c.get("/metrics")).text
    assert metric(text, "idlegrid_gateway_key_checks_total", "unknown") == 1
    assert metric(text, "idlegrid_gateway_key_checks_total", "unknown_cached") == 4


async def test_the_unknown_key_cache_never_delays_a_revocation(start_gateway):
    gw = await start_gateway(unknown_key_ttl_ms=600_000)
    key_id, key = await create_key(gw.gw.pool, scope="consumer", account_id=b"\x01" * 16)
    async with client(gw, key) as c:
        assert (await c.get("/v1/models")).status_code != 401
        assert await revoke_key(gw.gw.pool, key_id)

        async def refused() -> bool:
            return (await c.get("/v1/models")).status_code == 401

        await eventually(refused, what="the revoked key to be refused")


# -- database pool ------------------------------------------------------------

async def test_a_busy_pool_answers_503_with_retry_after_and_cached_keys_still_pass(start_gateway):
    gw = await start_gateway(db_acquire_timeout_ms=100, rate_per_s=0)
    _, good = await create_key(gw.gw.pool, scope="admin")
    async with client(gw, good) as c:
        assert (await c.post("/v1/admin/accounts", json={})).status_code == 400  # cached now
    pool = gw.gw.pool
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        async with client(gw, unknown_key()) as c:
            r = await c.get("/v1/models")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "database_busy" and r.headers["retry-after"] == "1"
        async with client(gw, good) as c:  # a known key needs no connection: it is still served
            assert (await c.post("/v1/admin/accounts", json={})).status_code == 400
    finally:
        for conn in held:
            await pool.release(conn)


# -- per key in flight --------------------------------------------------------

async def test_one_key_cannot_hold_more_than_its_share_of_requests_in_flight(start_gateway):
    gw = await start_gateway(key_concurrency_max=2)
    a_id, a = await create_key(gw.gw.pool, scope="admin")
    _, b = await create_key(gw.gw.pool, scope="admin")
    go = asyncio.Event()

    async def slow_body():
        yield b"{"
        await go.wait()
        yield b"}"

    async with client(gw, a) as ca, client(gw, b) as cb:
        slow = [asyncio.create_task(ca.post("/v1/admin/accounts", content=slow_body(),
                                            headers={"content-type": "application/json"})) for _ in range(2)]
        try:
            await eventually(lambda: gw.gw.slots.count(a_id) == 2, what="two requests of the key in flight")
            over = await ca.post("/v1/admin/accounts", json={})
            assert over.status_code == 429, over.text
            assert over.json()["error"]["code"] == "key_concurrency_exceeded" and "retry-after" in over.headers
            assert (await cb.post("/v1/admin/accounts", json={})).status_code == 400  # another key: served
        finally:
            go.set()
            answers = await asyncio.gather(*slow)
        assert [r.status_code for r in answers] == [400, 400]
        assert gw.gw.slots.count(a_id) == 0
        assert (await ca.post("/v1/admin/accounts", json={})).status_code == 400  # its slots are back
        text = (await ca.get("/metrics")).text
    assert metric(text, "idlegrid_gateway_edge_refusals_total", "key_concurrency") == 1
    with contextlib.suppress(Exception):
        go.set()
