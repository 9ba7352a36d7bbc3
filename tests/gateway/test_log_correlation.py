"""One request's log lines can be joined across the services: the id of an
HTTP request (the caller's X-Request-Id) is the request_id of the gateway's
line and of the scheduler's line for the RPC the gateway made for it, which
also names the gateway as its caller. An RPC that brings no id gets a fresh
one of its own; an RPC whose caller is not checked by the policy (the node
methods, which authenticate node tokens themselves) names no caller."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from idlegrid.common import identities
from tests.harness.logs import captured_logs
from tests.harness.polling import eventually

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

INFER = "/idlegrid.scheduler.v1.SchedulerService/Infer"
_FRESH_ID = re.compile(r"^[0-9a-f]{32}$")


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_a_request_id_joins_the_gateway_line_and_the_backend_rpc_line(stack):
    _, key = await stack.consumer()
    rid = f"corr-{uuid.uuid4().hex}"
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
    with captured_logs() as buf:
        async with stack.client(key) as c:
            r = await c.post("/v2/models/echo/infer", json=body, headers={"x-request-id": rid})
        assert r.status_code == 200 and r.headers["x-request-id"] == rid

        def joined() -> bool:
            mine = [x for x in _lines(buf.getvalue()) if x.get("request_id") == rid]
            return any(x["event"] == "http" for x in mine) and any(x.get("method") == INFER for x in mine)

        await eventually(joined, what="the gateway's and the scheduler's lines of the request")
    lines = _lines(buf.getvalue())
    http = [x for x in lines if x["event"] == "http" and x.get("request_id") == rid]
    infer = [x for x in lines if x["event"] == "rpc" and x.get("method") == INFER and x.get("request_id") == rid]
    assert len(http) == 1 and http[0]["status"] == 200
    assert len(infer) == 1 and infer[0]["status"] == "OK" and infer[0]["caller"] == identities.GATEWAY
    rpcs = [x for x in lines if x["event"] == "rpc"]
    fresh = [x["request_id"] for x in rpcs if x["request_id"] != rid and _FRESH_ID.match(x["request_id"])]
    assert len(fresh) == len(set(fresh))  # each RPC without an id of its own gets a new one
    for x in rpcs:
        if identities.is_node_method(x["method"]):
            assert "caller" not in x, x  # the policy checks no caller there: none is logged
        elif x["status"] == "OK":
            assert x["caller"] in identities.IDENTITIES, x
