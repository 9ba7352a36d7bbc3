"""REST routes the console's charts and tables read, beside the existing
provider and admin routes (same keys, same checks):

| route | scopes | answer |
|---|---|---|
| GET /v1/provider/earnings/buckets | provider; admin with ?account_id= | earnings per time bucket (``bucket``: hour or day, ...): released (settled) and held (recorded, not yet settled) |
| GET /v1/provider/jobs | provider; admin with ?account_id= | per-job line items, paged, filtered by ``node_id`` and ``model`` |
| GET /v1/provider/transactions | provider; admin with ?account_id= | the provider account's ledger transfers (earnings and payouts), newest first |
| GET /v1/admin/accounts | admin | accounts created through the gateway, with balances, newest first |
| GET /v1/admin/nodes | admin | every node of the registry with its state and reason |

A bucket's ``held_micros`` is the provider's share of its unsettled cost
(cost - fee, the fee floor-rounded per bucket), as GET /v1/provider/earnings
counts ``pending_micros``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import time

from google.protobuf.timestamp_pb2 import Timestamp
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idlegrid.common.money import split_fee
from idlegrid.gateway import params, views
from idlegrid.gateway.console import sql
from idlegrid.gateway.context import caller, gw, metadata
from idlegrid.gateway.errors import bad_request, rpc
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.registry.v1 import registry_pb2 as rpb

BUCKETS_MAX = 1_000  # buckets one answer may hold: the window is bounded by bucket * BUCKETS_MAX
DEFAULT_BUCKETS = {3600: 48, 86_400: 30}  # a window of 48 hours, or 30 days; others: 60 buckets
ACCOUNTS_PAGE_MAX = 100
_NODE_ID = re.compile(r"^[0-9a-f]{1,64}$")
_MODEL = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")


async def _provider_account(request: Request) -> bytes:
    rec = await caller(request, "provider", "admin")
    return params.own_account(request, rec)


def _ts(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


async def earnings_buckets(request: Request) -> Response:
    account_id = await _provider_account(request)
    g = gw(request)
    bucket_s = params.bucket_s(request)
    since, until = params.window(request)
    until_s = until.ToNanoseconds() / 1e9 if until is not None else time.time()
    since_s = since.ToNanoseconds() / 1e9 if since is not None else \
        until_s - bucket_s * DEFAULT_BUCKETS.get(bucket_s, 60)
    if (until_s - since_s) / bucket_s > BUCKETS_MAX:
        raise bad_request(f"the window holds more than {BUCKETS_MAX} buckets; narrow it or widen 'bucket'",
                          param="since")
    f = mpb.UsageFilter(provider_account_id=account_id, since=_ts(since_s), until=_ts(until_s))
    r = await rpc(g.backends.metering.GetUsage(mpb.GetUsageRequest(filter=f, bucket_s=bucket_s,
                                                                   group_by=mpb.GROUP_BY_NONE),
                                               timeout=g.rpc_timeout_s, metadata=metadata(request)))
    fee_bps = g.config.platform_fee_bps
    return JSONResponse({
        "object": "provider.earnings.buckets", "account_id": views.uid(account_id), "bucket_s": bucket_s,
        "since": views.timestamp(dt.datetime.fromtimestamp(since_s, dt.UTC)),
        "until": views.timestamp(dt.datetime.fromtimestamp(until_s, dt.UTC)),
        "buckets": [{"start": views.when(b.start), "jobs": b.jobs, "cost_micros": b.cost_micros,
                     "released_micros": b.provider_micros,
                     "held_micros": split_fee(b.cost_micros - b.settled_cost_micros, fee_bps)[0]}
                    for b in r.buckets]})


def _filter_value(request: Request, name: str, shape: re.Pattern) -> str:
    raw = request.query_params.get(name) or ""
    if raw and not shape.match(raw):
        raise bad_request(f"'{name}' is malformed", param=name)
    return raw


async def jobs(request: Request) -> Response:
    account_id = await _provider_account(request)
    g = gw(request)
    since, until = params.window(request)
    f = mpb.UsageFilter(provider_account_id=account_id, since=since, until=until,
                        node_id=_filter_value(request, "node_id", _NODE_ID),
                        model=_filter_value(request, "model", _MODEL))
    page = await rpc(g.backends.metering.ListUsage(
        mpb.ListUsageRequest(filter=f, limit=params.limit(request), page_token=params.cursor(request)),
        timeout=g.rpc_timeout_s, metadata=metadata(request)))
    return JSONResponse({"object": "list", "account_id": views.uid(account_id),
                         "data": [views.line_item(r, provider=True) for r in page.records],
                         "next_cursor": page.next_page_token or None})


async def transactions(request: Request) -> Response:
    account_id = await _provider_account(request)
    g = gw(request)
    raw = params.cursor(request)
    if raw and not (raw.isdigit() and len(raw) <= 19):
        raise bad_request("'cursor' is malformed", param="cursor")
    r = await rpc(g.backends.ledger.GetAccountTransfers(lpb.GetAccountTransfersRequest(
        account_id=account_id, after_seq=int(raw or 0), limit=params.limit(request), reversed=True),
        timeout=g.rpc_timeout_s, metadata=metadata(request)))
    return JSONResponse({"object": "list", "account_id": views.uid(account_id),
                         "data": [views.transfer(t, account_id) for t in r.transfers],
                         "next_cursor": str(r.next_seq) if r.next_seq else None})


async def accounts(request: Request) -> Response:
    await caller(request, "admin")
    g = gw(request)
    kind = params.choice(request, "kind", ("any", "consumer", "provider"), "any")
    limit = min(params.limit(request), ACCOUNTS_PAGE_MAX)
    raw = params.cursor(request)
    try:
        after = dt.datetime.fromisoformat(raw.replace("Z", "+00:00")) if raw else None
    except ValueError:
        raise bad_request("'cursor' is malformed", param="cursor") from None
    rows = await sql.accounts(g.pool, kind=None if kind == "any" else kind, after=after, limit=limit)
    balances: dict[bytes, lpb.Account] = {}
    if rows:
        r = await rpc(g.backends.ledger.LookupAccounts(lpb.LookupAccountsRequest(ids=[a.account_id for a in rows]),
                                                       timeout=g.rpc_timeout_s, metadata=metadata(request)))
        balances = {a.id: a for a in r.accounts}
    data = []
    for a in rows:
        ledger = balances.get(a.account_id)
        data.append({**(views.account(ledger) if ledger is not None else {"object": "account"}),
                     "account_id": views.uid(a.account_id), "kind": a.kind, "name": a.name,
                     "provider_id": views.uid(a.provider_id) if a.provider_id else None,
                     "created_at": views.timestamp(a.created_at)})
    more = len(rows) == limit
    return JSONResponse({"object": "list", "data": data,
                         "next_cursor": views.timestamp(rows[-1].created_at) if more else None})


async def nodes(request: Request) -> Response:
    await caller(request, "admin")
    g = gw(request)
    raw = params.cursor(request)
    try:
        token = base64.urlsafe_b64decode(raw.encode()) if raw else b""
    except (binascii.Error, ValueError):
        raise bad_request("'cursor' is malformed", param="cursor") from None
    r = await rpc(g.backends.registry.ListNodes(rpb.ListNodesRequest(page_size=params.limit(request),
                                                                     page_token=token),
                                                timeout=g.rpc_timeout_s, metadata=metadata(request)))
    return JSONResponse({"object": "list",
                         "data": [{**views.node(n), "provider_id": views.uid(n.provider_id)} for n in r.nodes],
                         "next_cursor": base64.urlsafe_b64encode(r.next_page_token).decode()
                         if r.next_page_token else None})


def routes() -> list[Route]:
    return [
        Route("/v1/provider/earnings/buckets", earnings_buckets, methods=["GET"]),
        Route("/v1/provider/jobs", jobs, methods=["GET"]),
        Route("/v1/provider/transactions", transactions, methods=["GET"]),
        Route("/v1/admin/accounts", accounts, methods=["GET"]),
        Route("/v1/admin/nodes", nodes, methods=["GET"]),
    ]

