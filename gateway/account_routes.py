"""Partner routes (consumer key; an admin key with ``?account_id=``):
GET /v1/account, GET /v1/account/usage, GET /v1/account/transactions."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idlegrid.gateway import onboarding, params, views
from idlegrid.gateway.context import caller, gw, metadata
from idlegrid.gateway.errors import rpc
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering.v1 import metering_pb2 as mpb

GROUPS = {"none": mpb.GROUP_BY_NONE, "model": mpb.GROUP_BY_MODEL, "node": mpb.GROUP_BY_NODE}


async def get_account(request: Request) -> Response:
    rec = await caller(request, "consumer", "admin")
    g = gw(request)
    a = await onboarding.lookup(g.backends, params.own_account(request, rec), timeout_s=g.rpc_timeout_s,
                                metadata=metadata(request))
    return JSONResponse(views.account(a))


async def usage(request: Request) -> Response:
    rec = await caller(request, "consumer", "admin")
    g = gw(request)
    account_id = params.own_account(request, rec)
    since, until = params.window(request)
    bucket_s = params.bucket_s(request)
    group = params.choice(request, "group_by", tuple(GROUPS), "none")
    limit, cursor = params.limit(request), params.cursor(request)
    f = mpb.UsageFilter(consumer_account_id=account_id, since=since, until=until)
    md, t = metadata(request), g.rpc_timeout_s
    agg, page = await asyncio.gather(
        rpc(g.backends.metering.GetUsage(mpb.GetUsageRequest(filter=f, bucket_s=bucket_s, group_by=GROUPS[group]),
                                         timeout=t, metadata=md)),
        rpc(g.backends.metering.ListUsage(mpb.ListUsageRequest(filter=f, limit=limit, page_token=cursor),
                                          timeout=t, metadata=md)))
    return JSONResponse({
        "object": "usage", "account_id": views.uid(account_id), "bucket_s": bucket_s, "group_by": group,
        "buckets": [views.bucket(b) for b in agg.buckets],
        "jobs": {"data": [views.line_item(r, provider=False) for r in page.records],
                 "next_cursor": page.next_page_token or None},
    })


async def transactions(request: Request) -> Response:
    rec = await caller(request, "consumer", "admin")
    g = gw(request)
    account_id = params.own_account(request, rec)
    after_seq = params.seq_cursor(request) or 0
    r = await rpc(g.backends.ledger.GetAccountTransfers(lpb.GetAccountTransfersRequest(
        account_id=account_id, after_seq=after_seq, limit=params.limit(request), reversed=True),
        timeout=g.rpc_timeout_s, metadata=metadata(request)))
    return JSONResponse({"object": "list", "account_id": views.uid(account_id),
                         "data": [views.transfer(t, account_id) for t in r.transfers],
                         "next_cursor": str(r.next_seq) if r.next_seq else None})


def routes() -> list[Route]:
    return [
        Route("/v1/account", get_account, methods=["GET"]),
        Route("/v1/account/usage", usage, methods=["GET"]),
        Route("/v1/account/transactions", transactions, methods=["GET"]),
    ]
