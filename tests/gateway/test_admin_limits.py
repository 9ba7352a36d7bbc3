"""Admin money operations have limits (issue 13): caps per call, per admin
key per UTC day and for all admin keys per day, refused with a 403 naming the
cap and nothing moved; admin keys expire; keys and admin actions are in an
append-only audit trail that admins read with GET /v1/admin/audit.

A real ledger, metering, registry, scheduler and gateway on a fresh
database; no node is needed."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest

from idlegrid.gateway.settings import GatewaySettings
from tests.harness.logs import captured_logs
from tests.harness.polling import eventually
from tests.harness.stack import start_stack

PARTS = ("ledger", "metering", "registry", "scheduler", "gateway")
CALL_MAX, KEY_DAY_MAX, DAY_MAX = 1_000, 2_500, 3_500
SETTINGS = GatewaySettings(topup_call_max_micros=CALL_MAX, topup_key_day_max_micros=KEY_DAY_MAX,
                           topup_day_max_micros=DAY_MAX, payout_call_max_micros=CALL_MAX,
                           admin_key_ttl_s=3600)


@pytest.fixture(scope="module")
async def gw(config, db_url):
    """The running gateway (its stack stops with the module)."""
    stack = await start_stack(config, db_url, parts=PARTS, provider=False, gateway_settings=SETTINGS)
    yield stack.gateway_srv
    await stack.stop()


def client(gw, key: str | None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=60)


async def admin_key(gw) -> str:
    return (await gw.create_key(scope="admin"))[1]


async def new_account(c: httpx.AsyncClient, kind: str = "consumer") -> str:
    r = await c.post("/v1/admin/accounts", json={"kind": kind, "name": f"{kind}-{uuid.uuid4().hex[:10]}"})
    assert r.status_code == 201, r.text
    return r.json()["account_id"]


async def topup(c: httpx.AsyncClient, account: str, amount: int, idem: str | None = None) -> httpx.Response:
    return await c.post(f"/v1/admin/accounts/{account}/topup",
                        json={"amount_micros": amount, "idempotency_key": idem or uuid.uuid4().hex})


async def transfers(c: httpx.AsyncClient, account: str) -> list:
    r = await c.get("/v1/account/transactions", params={"account_id": account})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def refused(r: httpx.Response, code: str, variable: str) -> None:
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("permission_error", code, "amount_micros")
    assert variable in err["message"]


async def test_a_top_up_over_the_per_call_cap_is_refused_and_moves_nothing(gw):
    async with client(gw, await admin_key(gw)) as c:
        account = await new_account(c)
        refused(await topup(c, account, CALL_MAX + 1), "topup_call_limit_exceeded",
                "IDLEGRID_GATEWAY_TOPUP_CALL_MAX_MICROS")
        assert await transfers(c, account) == []
        assert (await c.get("/v1/account", params={"account_id": account})).json()["available_micros"] == 0
        assert (await topup(c, account, CALL_MAX)).status_code == 200  # at the cap: allowed


async def test_a_payout_over_the_per_call_cap_is_refused_before_the_ledger(gw):
    async with client(gw, await admin_key(gw)) as c:
        provider = await new_account(c, "provider")
        refused(await c.post(f"/v1/admin/accounts/{provider}/payout",
                             json={"amount_micros": CALL_MAX + 1, "idempotency_key": "p-over"}),
                "payout_call_limit_exceeded", "IDLEGRID_GATEWAY_PAYOUT_CALL_MAX_MICROS")
        # Within the cap the ledger decides: this provider has earned nothing.
        r = await c.post(f"/v1/admin/accounts/{provider}/payout", json={"amount_micros": 5, "idempotency_key": "p"})
        assert r.status_code == 402, r.text


async def test_daily_caps_per_admin_key_and_for_all_keys_and_retries_count_once(gw, db_url):
    await _clear_todays_money(db_url)
    a, b = await admin_key(gw), await admin_key(gw)
    async with client(gw, a) as ca, client(gw, b) as cb:
        account = await new_account(ca)
        assert (await topup(ca, account, 1_000, "a1")).status_code == 200
        assert (await topup(ca, account, 1_000, "a2")).status_code == 200
        refused(await topup(ca, account, 1_000), "topup_key_day_limit_exceeded",
                "IDLEGRID_GATEWAY_TOPUP_KEY_DAY_MAX_MICROS")
        again = await topup(ca, account, 1_000, "a1")  # a retry is not a new top-up
        assert again.status_code == 200 and again.json()["status"] == "already_applied"
        assert (await topup(ca, account, 999, "a1")).status_code == 409  # same key, other amount
        assert (await topup(cb, account, 1_000, "b1")).status_code == 200  # another key: its own cap
        refused(await topup(cb, account, 1_000), "topup_day_limit_exceeded", "IDLEGRID_GATEWAY_TOPUP_DAY_MAX_MICROS")
        assert (await topup(cb, account, 500)).status_code == 200  # exactly DAY_MAX in all
        assert (await ca.get("/v1/account", params={"account_id": account})).json()["available_micros"] == 3_500
        assert len(await transfers(ca, account)) == 4


async def test_concurrent_top_ups_never_pass_a_cap_together(gw, db_url):
    await _clear_todays_money(db_url)
    key = await admin_key(gw)
    async with client(gw, key) as c:
        account = await new_account(c)
        answers = await asyncio.gather(*(topup(c, account, 1_000) for _ in range(6)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [200, 200, 403, 403, 403, 403], [r.text for r in answers]
        assert (await c.get("/v1/account", params={"account_id": account})).json()["available_micros"] == 2_000


async def _clear_todays_money(db_url: str) -> None:
    """Each test starts with today's caps unused (the table is the gateway's
    own record, not the audit trail)."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("DELETE FROM gateway.admin_money")
    finally:
        await conn.close()


async def test_admin_keys_expire(gw):
    async with client(gw, await admin_key(gw)) as c:
        r = await c.post("/v1/admin/keys", json={"scope": "admin"})
        assert r.status_code == 201 and r.json()["expires_at"] is not None  # always an expiry, by default
        r = await c.post("/v1/admin/keys", json={"scope": "admin", "expires_in_s": 3601})
        assert r.status_code == 400 and r.json()["error"]["param"] == "expires_in_s"  # at most the TTL
        short = (await c.post("/v1/admin/keys", json={"scope": "admin", "expires_in_s": 1})).json()["key"]

    async def expired() -> bool:
        async with client(gw, short) as c:
            r = await c.get("/v1/admin/audit")
        return r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"

    await eventually(expired, what="the short-lived admin key to expire")


async def test_the_audit_trail_records_who_did_what_and_cannot_be_changed(gw, db_url):
    key = await admin_key(gw)
    key_id = key.split("_")[1]
    async with client(gw, key) as c:
        account = await new_account(c)
        made = (await c.post("/v1/admin/keys", json={"scope": "consumer", "account_id": account})).json()
        assert (await c.delete(f"/v1/admin/keys/{made['key_id']}")).status_code == 200
        assert (await topup(c, account, 700, "audited")).status_code == 200
        refused(await topup(c, account, CALL_MAX + 1, "too-big"), "topup_call_limit_exceeded",
                "IDLEGRID_GATEWAY_TOPUP_CALL_MAX_MICROS")
        r = await c.get("/v1/admin/audit", params={"limit": 1000})
        assert r.status_code == 200, r.text
        mine = [e for e in r.json()["data"] if e["actor"] == key_id]
        assert [(e["action"], e["result"]) for e in reversed(mine)] == [
            ("create_account", "ok"), ("create_key", "ok"), ("revoke_key", "ok"), ("topup", "started"),
            ("topup", "ok"), ("topup", "refused")]
        assert all(e["at"] and e["seq"] for e in mine)
        assert mine[0]["amount_micros"] == CALL_MAX + 1 and mine[0]["idempotency_key"] == "too-big"
        assert mine[1]["account_id"] == account and mine[1]["amount_micros"] == 700
        assert mine[3]["key_id"] == made["key_id"] == mine[4]["key_id"]
        assert made["key"] not in r.text
        # Paged, newest first.
        first = (await c.get("/v1/admin/audit", params={"limit": 2})).json()
        second = (await c.get("/v1/admin/audit", params={"limit": 2, "cursor": first["next_cursor"]})).json()
        assert first["data"][1]["seq"] > second["data"][0]["seq"]
        assert (await c.get("/v1/admin/audit", params={"cursor": "x"})).status_code == 400
    async with client(gw, made["key"]) as c:
        assert (await c.get("/v1/admin/audit")).status_code == 401
    conn = await asyncpg.connect(db_url)
    try:
        for sql in ("UPDATE gateway.audit SET result = 'ok'", "DELETE FROM gateway.audit",
                    "TRUNCATE gateway.audit"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(sql)
    finally:
        await conn.close()


async def test_a_consumer_key_cannot_read_the_audit_trail(gw):
    async with client(gw, await admin_key(gw)) as c:
        account = await new_account(c)
        key = (await c.post("/v1/admin/keys", json={"scope": "consumer", "account_id": account})).json()["key"]
    async with client(gw, key) as c:
        r = await c.get("/v1/admin/audit")
    assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_scope"


async def test_admin_actions_never_log_a_key(gw):
    with captured_logs() as buf:
        key = await admin_key(gw)
        async with client(gw, key) as c:
            account = await new_account(c)
            made = (await c.post("/v1/admin/keys", json={"scope": "consumer", "account_id": account})).json()
            await topup(c, account, CALL_MAX + 1)
            await c.get("/v1/admin/audit")
        async with client(gw, made["key"]) as c:
            await c.get("/v1/account")
        await eventually(lambda: buf.getvalue().count('"event": "http"') >= 5, what="every request's log line")
    text = buf.getvalue()
    for secret in (key, key.split("_", 2)[2], made["key"], made["key"].split("_", 2)[2]):
        assert secret not in text
