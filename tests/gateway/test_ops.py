"""Operations: health, readiness, metrics, the OpenAPI document (which must
describe every route) and its docs page; a gateway whose backends are down
answers 503s that name no host and carry no gRPC detail."""

from __future__ import annotations

import socket

import httpx
import pytest
from starlette.routing import Route

from idlegrid.bench.kit import free_port
from idlegrid.gateway import service as gateway_service
from idlegrid.gateway.app import routes
from idlegrid.gateway.keys import create_key
from idlegrid.gateway.settings import GatewaySettings

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton


async def test_healthz_and_readyz(stack):
    async with stack.client() as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        r = await c.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "SERVING", "ledger": "SERVING", "scheduler": "SERVING",
                                  "metering": "SERVING", "registry": "SERVING", "node_view": "SYNCED"}


async def test_metrics_count_requests_by_route_and_status(stack):
    _, key = await stack.consumer()
    async with stack.client(key) as c:
        await c.get("/v1/account")
        await c.get("/v1/nowhere")
        text = (await c.get("/metrics")).text
    assert 'idlegrid_gateway_requests_total{method="GET",route="/v1/account",status="200"}' in text
    assert 'route="unmatched",status="404"' in text
    assert "idlegrid_gateway_request_duration_seconds_bucket" in text
    assert "idlegrid_gateway_requests_in_flight" in text


async def test_openapi_describes_every_route_and_docs_load_it(stack):
    async with stack.client() as c:
        doc = (await c.get("/openapi.json")).json()
        docs = await c.get("/docs")
    assert doc["openapi"].startswith("3.")
    for route in routes():
        assert isinstance(route, Route)
        path = route.path.replace(":path}", "}")
        for method in route.methods - {"HEAD"}:
            assert method.lower() in doc["paths"].get(path, {}), f"{method} {path} is not in openapi.json"
    assert docs.status_code == 200 and "swagger-ui" in docs.text and "/openapi.json" in docs.text


async def test_a_request_id_is_echoed_or_made(stack):
    async with stack.client() as c:
        assert (await c.get("/healthz", headers={"x-request-id": "abc-123"})).headers["x-request-id"] == "abc-123"
        assert len((await c.get("/healthz", headers={"x-request-id": "bad id!"})).headers["x-request-id"]) == 32


@pytest.fixture(scope="module")
async def orphan(config, db_url):
    """A gateway whose backend services are all down."""
    dead = {name: f"127.0.0.1:{free_port()}" for name in ("ledger", "scheduler", "metering", "registry")}
    gw = await gateway_service.start(config, port=0, database_url=db_url, ledger_addr=dead["ledger"],
                                     scheduler_addr=dead["scheduler"], metering_addr=dead["metering"],
                                     registry_addr=dead["registry"], settings=GatewaySettings())
    yield gw
    await gw.stop(1)


async def test_backends_down_means_503_without_leaking_grpc_details(orphan, stack):
    _, key = await create_key(orphan.gw.pool, scope="consumer", account_id=b"\x01" * 16)
    async with httpx.AsyncClient(base_url=orphan.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as c:
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["ledger"] == "UNREACHABLE"
        for r in (await c.get("/v1/account"),
                  await c.post("/v1/completions", json={"model": "m", "prompt": "x"}),
                  await c.get("/v1/models")):
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            text = r.text.lower()
            assert "127.0.0.1" not in text and "grpc" not in text and "traceback" not in text


async def test_the_listening_socket_is_tcp_so_replies_are_not_held_by_nagle(stack):
    """asyncio sets TCP_NODELAY only on sockets whose proto is TCP; without it
    every small reply waited for the client's delayed ACK (about 40 ms)."""
    assert stack.gateway._sock.proto == socket.IPPROTO_TCP
