"""The stateful links of the gateway's OpenAPI document, walked once,
deterministically, as a client reading only the document would: create an
account, follow its links (a key for it, then use the key, revoke it, and
use it again; top it up, then read the balance and the transfer). Every
answer is held to the schema the document gives it.

Pins down: the document's links are true (each expression names a field the
answer has, and the operation it leads to accepts it), and a revoked key is
refused at once. The schemathesis run (test_schemathesis.py) explores the
same links at random."""

from __future__ import annotations

import re
import uuid

import httpx
import jsonschema

_EXPR = re.compile(r"\{?\$response\.body#(/[^}]*)\}?")


def _pointer(body: dict, pointer: str):
    for part in pointer.strip("/").split("/"):
        body = body[part]
    return body


def _evaluate(expr, body: dict):
    """A link's runtime expression ($response.body#/a/b, or one embedded in a string)."""
    if not isinstance(expr, str):
        return expr
    whole = _EXPR.fullmatch(expr)
    if whole and not expr.startswith("{"):
        return _pointer(body, whole.group(1))
    return _EXPR.sub(lambda m: str(_pointer(body, m.group(1))), expr)


class Client:
    """Calls operations by operationId, each answer checked against the document."""

    def __init__(self, http: httpx.AsyncClient, doc: dict) -> None:
        self.http, self.doc = http, doc
        self.ops = {op["operationId"]: (path, method, op) for path, item in doc["paths"].items()
                    for method, op in item.items()}

    def check(self, op_id: str, r: httpx.Response) -> dict:
        _, _, op = self.ops[op_id]
        declared = op["responses"].get(str(r.status_code))
        assert declared is not None, f"{op_id} answered an undocumented {r.status_code}: {r.text}"
        schema = declared.get("content", {}).get("application/json", {}).get("schema")
        if schema is None:
            return {}
        body = r.json()
        jsonschema.validate(body, {**schema, "components": self.doc["components"]})
        return body

    async def call(self, op_id: str, *, path: dict | None = None, query: dict | None = None,
                   headers: dict | None = None, body: dict | None = None) -> httpx.Response:
        template, method, _ = self.ops[op_id]
        url = template.format(**(path or {}))
        return await self.http.request(method.upper(), url, params=query, headers=headers, json=body)

    async def follow(self, op_id: str, status: int, body: dict, link: str, *, expect: int | None,
                     extra_body: dict | None = None) -> tuple[httpx.Response, dict]:
        """Follows ``link`` of ``op_id``'s ``status`` answer ``body`` (``expect``: its status; None: any)."""
        _, _, op = self.ops[op_id]
        spec = op["responses"][str(status)]["links"][link]
        parts: dict[str, dict] = {"path": {}, "query": {}, "header": {}}
        for name, expr in spec.get("parameters", {}).items():
            where, _, key = name.partition(".")
            parts[where][key] = _evaluate(expr, body)
        req_body = spec.get("requestBody")
        if isinstance(req_body, dict):
            req_body = {k: _evaluate(v, body) for k, v in req_body.items()}
        if extra_body is not None:
            req_body = {**(req_body or {}), **extra_body}
        r = await self.call(spec["operationId"], path=parts["path"], query=parts["query"] or None,
                            headers=parts["header"] or None, body=req_body)
        assert expect is None or r.status_code == expect, f"{op_id} -> {link}: {r.status_code} {r.text}"
        return r, self.check(spec["operationId"], r)


async def test_document_links_create_use_revoke_and_top_up(target):
    """create account -> key -> use -> revoke -> refused; account -> top up -> read."""
    admin = {"authorization": f"Bearer {target.keys['admin']}"}
    async with httpx.AsyncClient(base_url=target.url, headers=admin) as http:
        doc = (await http.get("/openapi.json")).json()
        c = Client(http, doc)
        r = await c.call("createAccount", body={"kind": "consumer", "name": f"links-{uuid.uuid4().hex[:8]}"})
        assert r.status_code == 201, r.text
        account = c.check("createAccount", r)

        _, key = await c.follow("createAccount", 201, account, "CreateKey", expect=201)
        assert key["account_id"] == account["account_id"] and key["scope"] == "consumer"
        _, own = await c.follow("createKey", 201, key, "UseKeyOnAccount", expect=200)
        assert own["account_id"] == account["account_id"] and own["available_micros"] == 0
        await c.follow("createKey", 201, key, "UseKey", expect=200)
        _, revoked = await c.follow("createKey", 201, key, "RevokeKey", expect=200)
        assert revoked["revoked"] is True
        await c.follow("createKey", 201, key, "UseKeyOnAccount", expect=401)  # refused at once
        await c.follow("createKey", 201, key, "RevokeKey", expect=404)  # and only once

        _, op = await c.follow("createAccount", 201, account, "TopUp", expect=200,
                               extra_body={"amount_micros": 1234, "idempotency_key": uuid.uuid4().hex})
        assert op["status"] == "applied" and op["account"]["available_micros"] == 1234
        _, read = await c.follow("topUp", 200, op, "ReadAccount", expect=200)
        assert read["available_micros"] == 1234
        _, page = await c.follow("topUp", 200, op, "ReadTransactions", expect=200)
        assert [t["amount_micros"] for t in page["data"]] == [1234]
        for link in ("ReadUsage", "ReadTransactions", "ReadAccount"):
            await c.follow("createAccount", 201, account, link, expect=200)
        for link in ("ReadEarnings", "ReadNodes"):  # a consumer account is no provider's: a documented 4xx
            r, _ = await c.follow("createAccount", 201, account, link, expect=None)
            assert 400 <= r.status_code < 500, r.text
