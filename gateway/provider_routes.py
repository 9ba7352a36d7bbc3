"""Provider routes (provider key; an admin key with ``?account_id=``):

GET /v1/provider/earnings: what the provider earned, to the micro-credit.
``earned_micros`` is settled on the ledger (the provider account's posted
credits); ``paid_out_micros`` left by payouts; ``balance_micros`` is what a
payout may take now; ``pending_micros`` is the provider's share of usage
recorded by metering but not yet settled (cost - fee, the fee floor-rounded
per bucket: it can exceed the exact per-job figure by less than one
micro-credit per job). Then a breakdown by node and by model over the window
(``since`` / ``until``), and the per-job line items, paged (``limit``,
``cursor``).

GET /v1/provider/nodes: the provider's nodes in the registry, paged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idlegrid.common.money import split_fee
from idlegrid.gateway import onboarding, params, views
from idlegrid.gateway.context import caller, gw, metadata
from idlegrid.gateway.errors import ApiError, bad_request, rpc
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.registry.v1 import registry_pb2 as rpb

BREAKDOWN_BUCKET_S = 2_592_000  # 30 days, the largest bucket metering takes; summed per key


async def _provider(request: Request) -> tuple[bytes, bytes | None]:
    """(provider ledger account, registry provider id) of this request."""
    rec = await caller(request, "provider", "admin")
    if rec.scope == "admin":
        account_id = params.own_account(request, rec)
        return account_id, await onboarding.provider_of(gw(request).pool, account_id)
    params.own_account(request, rec)  # 403 when another account is named
    assert rec.account_id is not None
    return rec.account_id, rec.provider_id


def _sum_by_key(buckets, fee_bps: int) -> list[dict]:
    out: dict[str, dict] = {}
    for b in buckets:
        e = out.setdefault(b.key, {"jobs": 0, "prompt_tokens": 0, "completion_tokens": 0, "requests": 0,
                                   "cost_micros": 0, "earned_micros": 0, "pending_micros": 0})
        e["jobs"] += b.jobs
        e["prompt_tokens"] += b.prompt_tokens
        e["completion_tokens"] += b.completion_tokens
        e["requests"] += b.requests
        e["cost_micros"] += b.cost_micros
        e["earned_micros"] += b.provider_micros
        e["pending_micros"] += split_fee(b.cost_micros - b.settled_cost_micros, fee_bps)[0]
    return [{"key": k, **v} for k, v in sorted(out.items())]


async def earnings(request: Request) -> Response:
    account_id, _ = await _provider(request)
    g = gw(request)
    since, until = params.window(request)
    limit, cursor = params.limit(request), params.cursor(request)
    md, t, m = metadata(request), g.rpc_timeout_s, g.backends.metering
    f = mpb.UsageFilter(provider_account_id=account_id, since=since, until=until)
    everything = mpb.UsageFilter(provider_account_id=account_id)

    def usage(flt, group):
        return rpc(m.GetUsage(mpb.GetUsageRequest(filter=flt, bucket_s=BREAKDOWN_BUCKET_S, group_by=group),
                              timeout=t, metadata=md))

    account, total, by_node, by_model, page = await asyncio.gather(
        onboarding.lookup(g.backends, account_id, timeout_s=t, metadata=md),
        usage(everything, mpb.GROUP_BY_NONE), usage(f, mpb.GROUP_BY_NODE), usage(f, mpb.GROUP_BY_MODEL),
        rpc(m.ListUsage(mpb.ListUsageRequest(filter=f, limit=limit, page_token=cursor), timeout=t, metadata=md)))
    if account.kind != onboarding.KINDS["provider"]:
        raise ApiError(400, "this is not a provider account", param="account_id", code="not_a_provider")
    fee_bps = g.config.platform_fee_bps
    pending = sum(split_fee(b.cost_micros - b.settled_cost_micros, fee_bps)[0] for b in total.buckets)
    return JSONResponse({
        "object": "provider.earnings", "account_id": views.uid(account_id),
        "earned_micros": account.credits_posted, "paid_out_micros": account.debits_posted,
        "balance_micros": views.available(account), "pending_micros": pending, "fee_bps": fee_bps,
        "by_node": [{"node_id": e.pop("key") or None, **e} for e in _sum_by_key(by_node.buckets, fee_bps)],
        "by_model": [{"model": e.pop("key"), **e} for e in _sum_by_key(by_model.buckets, fee_bps)],
        "jobs": {"data": [views.line_item(r, provider=True) for r in page.records],
                 "next_cursor": page.next_page_token or None},
    })


async def nodes(request: Request) -> Response:
    _, provider_id = await _provider(request)
    g = gw(request)
    if provider_id is None:
        raise ApiError(404, "this account has no registry provider", code="provider_not_found")
    raw = params.cursor(request)
    try:
        token = base64.urlsafe_b64decode(raw.encode()) if raw else b""
    except (binascii.Error, ValueError):
        raise bad_request("'cursor' is malformed", param="cursor") from None
    r = await rpc(g.backends.registry.ListNodes(rpb.ListNodesRequest(
        provider_id=provider_id, page_size=params.limit(request), page_token=token),
        timeout=g.rpc_timeout_s, metadata=metadata(request)))
    return JSONResponse({"object": "list", "provider_id": views.uid(provider_id),
                         "data": [views.node(n) for n in r.nodes],
                         "next_cursor": base64.urlsafe_b64encode(r.next_page_token).decode()
                         if r.next_page_token else None})


def routes() -> list[Route]:
    return [
        Route("/v1/provider/earnings", earnings, methods=["GET"]),
        Route("/v1/provider/nodes", nodes, methods=["GET"]),
    ]
