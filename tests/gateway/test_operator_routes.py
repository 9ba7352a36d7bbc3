"""The operators' REST routes (admin key) over the real registry: the model
catalog, suspending and unsuspending nodes and providers, trust, provider
tokens, banned hosts and the trail of who did what and why, each audited by
the gateway too. Providers see their nodes' state, reasons, reputation and
trust. Verification is skipped (the registry's documented test setting), so
no Triton runs here."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from idlegrid.common.auth import bearer
from idlegrid.common.channel import open_channel
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.registry.v1 import registry_pb2_grpc
from tests.harness import eventually
from tests.harness.stack import PARTS, start_stack

REGISTRY = RegistrySettings(heartbeat_interval_ms=10_000, skip_verification=True, direct_endpoints=True,
                            direct_allow_cidrs=("127.0.0.0/8",))
ECHO_CANARY = {"kserve_request_json": json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1],
                                                              "data": [1.0]}]}),
               "kserve_expected_json": json.dumps({"outputs": [{"name": "OUTPUT0", "datatype": "FP32",
                                                                "shape": [1, 1], "data": [1.0]}]}),
               "tolerance": 0.001}


class Ops:
    def __init__(self, stack, admin_key: str) -> None:
        self.stack, self.admin_key = stack, admin_key
        ch = open_channel(stack.addrs["registry"], token=None)
        stack.channels.append(ch)
        self.anon = registry_pb2_grpc.RegistryServiceStub(ch)
        self.provider: dict = {}
        self.provider_key = ""

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.stack.addrs["gateway"], headers=headers, timeout=60)

    async def admin(self, method: str, path: str, **kw) -> httpx.Response:
        async with self.client(self.admin_key) as c:
            return await c.request(method, path, **kw)

    async def node(self, token: str | None = None, endpoint: str = "") -> bytes:
        """A READY node of the provider (a direct endpoint, or linked when empty)."""
        r = await self.anon.RegisterNode(rpb.RegisterNodeRequest(
            endpoint=endpoint, hardware=rpb.Hardware(cpu_cores=2, memory_bytes=1 << 30),
            models=[rpb.ModelOffer(name="echo", kind=rpb.MODEL_KIND_TENSOR, max_batch_size=64,
                                   price=rpb.Price(per_request=5))]),
            metadata=bearer(token or self.provider["provider_token"]))
        return r.node_id


@pytest.fixture(scope="module")
async def ops(config, db_url):
    stack = await start_stack(config, db_url, parts=PARTS, provider=False, registry_settings=REGISTRY)
    try:
        o = Ops(stack, (await stack.gateway_srv.create_key(scope="admin"))[1])
        r = await o.admin("POST", "/v1/admin/accounts", json={"kind": "provider", "name": f"p-{uuid.uuid4().hex[:6]}"})
        assert r.status_code == 201, r.text
        o.provider = r.json()
        r = await o.admin("POST", "/v1/admin/keys", json={"scope": "provider", "account_id": o.provider["account_id"]})
        o.provider_key = r.json()["key"]
        yield o
    finally:
        await stack.stop()


async def test_the_catalog_is_managed_over_rest_with_reasons(ops):
    body = {"kind": "tensor", "canaries": [ECHO_CANARY], "max_price": {"per_request": 50}, "reason": "new model"}
    r = await ops.admin("PUT", "/v1/admin/catalog/echo-small", json=body)
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["object"] == "catalog_model" and m["name"] == "echo-small" and m["max_price"]["per_request"] == 50
    assert m["updated_by"] == (await ops.stack.gateway_srv.gw.auth.authenticate(f"Bearer {ops.admin_key}")).key_id
    listed = (await ops.admin("GET", "/v1/admin/catalog")).json()["data"]
    assert [x["name"] for x in listed] == sorted(x["name"] for x in listed) and "echo-small" in [x["name"] for x in listed]
    for bad, code in (({**body, "reason": ""}, 400), ({k: v for k, v in body.items() if k != "reason"}, 400),
                      ({**body, "kind": "image"}, 400), ({**body, "canaries": []}, 400),
                      ({**body, "max_price": {"per_request": 10**12 + 1}}, 400),
                      ({**body, "canaries": [{"prompt": "hi"}]}, 400), ({**body, "colour": "red"}, 400)):
        r = await ops.admin("PUT", "/v1/admin/catalog/echo-small", json=bad)
        assert r.status_code == code, (bad, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = await ops.admin("PUT", "/v1/admin/catalog/bad name", json=body)
    assert r.status_code == 400
    assert (await ops.admin("DELETE", "/v1/admin/catalog/echo-small")).status_code == 400  # no reason
    r = await ops.admin("DELETE", "/v1/admin/catalog/echo-small", params={"reason": "withdrawn"})
    assert r.status_code == 200 and r.json()["deleted"] is True
    r = await ops.admin("DELETE", "/v1/admin/catalog/echo-small", params={"reason": "again"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_in_catalog"


async def test_suspending_a_node_shows_the_provider_why_and_unsuspending_brings_it_back(ops):
    node_id = await ops.node(endpoint="127.0.0.1:23001")
    hex_id = node_id.hex()
    r = await ops.admin("POST", f"/v1/admin/nodes/{hex_id}/suspend", json={"reason": "abuse report 42"})
    assert r.status_code == 200, r.text
    [n] = r.json()["data"]
    assert n["state"] == "suspended" and "abuse report 42" in n["state_detail"]
    async with ops.client(ops.provider_key) as c:
        mine = {x["node_id"]: x for x in (await c.get("/v1/provider/nodes")).json()["data"]}
    shown = mine[hex_id]
    assert shown["state"] == "suspended" and shown["state_reason"] == "suspended"
    assert "abuse report 42" in shown["state_detail"] and shown["trusted"] is False
    assert shown["reputation"]["score"] == 0.5 and shown["reputation"]["reasons"] == []
    r = await ops.admin("POST", f"/v1/admin/nodes/{uuid.UUID(bytes=node_id)}/unsuspend", json={"reason": "cleared"})
    assert r.status_code == 200 and r.json()["data"][0]["node_id"] == hex_id

    async def ready() -> bool:
        async with ops.client(ops.provider_key) as c:
            nodes = (await c.get("/v1/provider/nodes")).json()["data"]
        return any(x["node_id"] == hex_id and x["state"] == "ready" for x in nodes)

    await eventually(ready, what="the node ready again")
    for path, code in ((f"/v1/admin/nodes/{'0' * 32}/suspend", 400), ("/v1/admin/nodes/nope/suspend", 400),
                       (f"/v1/admin/nodes/{uuid.uuid4()}/suspend", 404)):
        assert (await ops.admin("POST", path, json={"reason": "x"})).status_code == code
    assert (await ops.admin("POST", f"/v1/admin/nodes/{hex_id}/suspend", json={})).status_code == 400


async def test_provider_controls_trust_suspend_rotate_and_revoke(ops):
    pid = ops.provider["provider_id"]
    node_id = await ops.node(endpoint="127.0.0.1:23002")
    r = await ops.admin("POST", f"/v1/admin/providers/{pid}/trust", json={"reason": "our datacenter"})
    assert r.status_code == 200 and r.json()["trusted"] is True and r.json()["provider_id"] == pid
    async with ops.client(ops.provider_key) as c:
        assert all(x["trusted"] for x in (await c.get("/v1/provider/nodes")).json()["data"])
    r = await ops.admin("POST", f"/v1/admin/providers/{pid}/suspend", json={"reason": "fraud"})
    assert r.status_code == 200 and node_id.hex() in [x["node_id"] for x in r.json()["data"]]
    r = await ops.admin("POST", f"/v1/admin/nodes/{node_id.hex()}/unsuspend", json={"reason": "too early"})
    assert r.status_code == 409  # its provider is still suspended
    r = await ops.admin("POST", f"/v1/admin/providers/{pid}/unsuspend", json={"reason": "cleared"})
    assert r.status_code == 200
    r = await ops.admin("POST", f"/v1/admin/providers/{pid}/rotate-token", json={"reason": "leaked"})
    assert r.status_code == 200 and r.json()["provider_token"] != ops.provider["provider_token"]
    ops.provider["provider_token"] = r.json()["provider_token"]
    await ops.node(endpoint="127.0.0.1:23003")  # the new token works
    r = await ops.admin("POST", f"/v1/admin/providers/{pid}/revoke-token", json={"reason": "stolen"})
    assert r.status_code == 200 and r.json()["revoked"] is True and r.json()["offline_node_ids"]
    assert (await ops.admin("POST", f"/v1/admin/providers/{uuid.uuid4()}/trust",
                            json={"reason": "x"})).status_code == 404
    r = await ops.admin("POST", f"/v1/admin/providers/{pid}/rotate-token", json={"reason": "a new one"})
    ops.provider["provider_token"] = r.json()["provider_token"]


async def test_a_banned_host_takes_its_nodes_offline(ops):
    r = await ops.admin("POST", f"/v1/admin/providers/{ops.provider['provider_id']}/rotate-token",
                        json={"reason": "fresh"})
    ops.provider["provider_token"] = r.json()["provider_token"]
    node_id = await ops.node(endpoint="127.0.0.2:23004")
    r = await ops.admin("POST", "/v1/admin/endpoints/ban", json={"host": "127.0.0.2", "reason": "malware"})
    assert r.status_code == 200 and r.json()["offline_node_ids"] == [node_id.hex()]
    assert (await ops.admin("POST", "/v1/admin/endpoints/ban", json={"host": "a b", "reason": "x"})).status_code == 400
    r = await ops.admin("POST", "/v1/admin/endpoints/unban", json={"host": "127.0.0.2", "reason": "clean"})
    assert r.status_code == 200 and r.json()["banned"] is False


async def test_every_operator_action_is_in_both_trails_and_only_admins_act(ops):
    key_id = (await ops.stack.gateway_srv.gw.auth.authenticate(f"Bearer {ops.admin_key}")).key_id
    seen, cursor = [], None
    while True:
        r = await ops.admin("GET", "/v1/admin/operator-actions", params={"limit": 3, **({"cursor": cursor}
                                                                                        if cursor else {})})
        assert r.status_code == 200, r.text
        seen += r.json()["data"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    mine = [a for a in seen if a["actor"] == key_id]
    assert {"put_catalog_model", "remove_catalog_model", "suspend_node", "unsuspend_node", "trust_provider",
            "suspend_provider", "unsuspend_provider", "rotate_provider_token", "revoke_provider_token",
            "ban_endpoint", "unban_endpoint"} <= {a["action"] for a in mine}
    assert all(a["reason"] and a["target"] for a in mine)
    assert [a["seq"] for a in seen] == sorted(a["seq"] for a in seen)
    audit = (await ops.admin("GET", "/v1/admin/audit", params={"limit": 1000})).json()["data"]
    audited = {(e["action"], e["result"]) for e in audit if e["actor"] == key_id}
    assert ("suspend_node", "ok") in audited and ("remove_catalog_model", "refused") in audited
    for key, status in ((None, 401), (ops.provider_key, 403)):
        async with ops.client(key) as c:
            assert (await c.get("/v1/admin/catalog")).status_code == status
            assert (await c.post(f"/v1/admin/providers/{ops.provider['provider_id']}/trust",
                                 json={"reason": "me"})).status_code == status
