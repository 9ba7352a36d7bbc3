"""Provider routes (provider key; an admin key with ``?account_id=``):

GET /v1/provider/earnings: what the provider earned, to the micro-credit.
A job's share is first *held* (pending on the ledger for the release window)
and then *released*; a node found cheating has its held earnings *voided*
and refunded to the partners who paid them. ``earned_micros`` is posted on
the ledger (released, or posted at settlement: the provider account's
posted credits); ``held_micros`` is held (its pending credits; the earliest
release at ``next_release_at``); ``released_micros`` / ``voided_micros``
what metering released / voided so far; ``paid_out_micros`` left by
payouts; ``balance_micros`` (= ``available_micros``) is what a payout may
take now; ``pending_micros`` is the provider's share of usage recorded by
metering but not yet settled (cost - fee, the fee floor-rounded per bucket:
it can exceed the exact per-job figure by less than one micro-credit per
job). Then a breakdown by node (with each node's held, released and voided
earnings) and by model over the window (``since`` / ``until``), and the
per-job line items, paged (``limit``, ``cursor``), each with its earning's
state and release time and its spot-check result.

GET /v1/provider/nodes: the provider's nodes in the registry, paged, each
with its state and why (state_detail: a suspension's reason, a failed
check), its reputation with the reasons for it, and whether it is trusted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idlegrid.common.money import split_fee
from idlegrid.gateway import onboarding, operator_views, params, views
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


_EARNING_STATES = {mpb.EARNING_STATE_HELD: "held", mpb.EARNING_STATE_RELEASED: "released",
                   mpb.EARNING_STATE_VOIDED: "voided", mpb.EARNING_STATE_POSTED: "posted"}
_CHECK_RESULTS = {mpb.CHECK_RESULT_PASSED: "passed", mpb.CHECK_RESULT_FAILED: "failed"}


def _by_node(buckets, held: mpb.GetEarningsResponse, fee_bps: int) -> list[dict]:
    """The window's usage by node, with each node's held, released and voided earnings (all time)."""
    nodes = {n.node_id: n.totals for n in held.by_node}
    out = []
    for e in _sum_by_key(buckets, fee_bps):
        key = e.pop("key")
        t = nodes.get(key, mpb.EarningTotals())
        out.append({"node_id": key or None, **e, "held_micros": t.held_micros,
                    "released_micros": t.released_micros, "voided_micros": t.voided_micros})
    return out


def _job(r: mpb.UsageRecord) -> dict:
    """A line item with the provider's earning (state, release time, why
    voided) and the job's spot-check result."""
    return {**views.line_item(r, provider=True),
            "earning": _EARNING_STATES.get(r.earning),
            "earning_release_at": views.when(r.earning_release_at, r.HasField("earning_release_at")),
            "earning_resolved_at": views.when(r.earning_resolved_at, r.HasField("earning_resolved_at")),
            "earning_note": r.earning_note or None,
            "check_result": _CHECK_RESULTS.get(r.check_result, "unchecked"),
            "check_detail": r.check_detail or None,
            "checked_at": views.when(r.checked_at, r.HasField("checked_at"))}


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

    account, total, by_node, by_model, page, held = await asyncio.gather(
        onboarding.lookup(g.backends, account_id, timeout_s=t, metadata=md),
        usage(everything, mpb.GROUP_BY_NONE), usage(f, mpb.GROUP_BY_NODE), usage(f, mpb.GROUP_BY_MODEL),
        rpc(m.ListUsage(mpb.ListUsageRequest(filter=f, limit=limit, page_token=cursor), timeout=t, metadata=md)),
        rpc(m.GetEarnings(mpb.GetEarningsRequest(provider_account_id=account_id), timeout=t, metadata=md)))
    if account.kind != onboarding.KINDS["provider"]:
        raise ApiError(400, "this is not a provider account", param="account_id", code="not_a_provider")
    fee_bps = g.config.platform_fee_bps
    pending = sum(split_fee(b.cost_micros - b.settled_cost_micros, fee_bps)[0] for b in total.buckets)
    return JSONResponse({
        "object": "provider.earnings", "account_id": views.uid(account_id),
        "earned_micros": account.credits_posted, "paid_out_micros": account.debits_posted,
        "balance_micros": views.available(account), "available_micros": views.available(account),
        "held_micros": account.credits_pending, "released_micros": held.total.released_micros,
        "voided_micros": held.total.voided_micros,
        "next_release_at": views.when(held.total.next_release_at, held.total.HasField("next_release_at")),
        "pending_micros": pending, "fee_bps": fee_bps,
        "by_node": _by_node(by_node.buckets, held, fee_bps),
        "by_model": [{"model": e.pop("key"), **e} for e in _sum_by_key(by_model.buckets, fee_bps)],
        "jobs": {"data": [_job(r) for r in page.records], "next_cursor": page.next_page_token or None},
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
                         "data": [operator_views.node(n) for n in r.nodes],
                         "next_cursor": base64.urlsafe_b64encode(r.next_page_token).decode()
                         if r.next_page_token else None})


def routes() -> list[Route]:
    return [
        Route("/v1/provider/earnings", earnings, methods=["GET"]),
        Route("/v1/provider/nodes", nodes, methods=["GET"]),
    ]
