"""JSON views of ledger accounts and transfers, usage records and buckets,
and registry nodes: ids as UUID strings (nodes: hex, as metering records
them), times as RFC 3339, amounts as integer micro-credits."""

from __future__ import annotations

import datetime as dt
import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.common.node_states import STATE_NAMES, reason_name
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.registry.v1 import registry_pb2 as rpb

_KINDS = {lpb.ACCOUNT_KIND_CONSUMER: "consumer", lpb.ACCOUNT_KIND_PROVIDER: "provider",
          lpb.ACCOUNT_KIND_ESCROW: "escrow", lpb.ACCOUNT_KIND_PLATFORM: "platform",
          lpb.ACCOUNT_KIND_EXTERNAL: "external"}
_CODES = {lpb.TRANSFER_CODE_TOPUP: "topup", lpb.TRANSFER_CODE_RESERVE: "reserve",
          lpb.TRANSFER_CODE_EARNING: "earning", lpb.TRANSFER_CODE_FEE: "fee", lpb.TRANSFER_CODE_PAYOUT: "payout",
          lpb.TRANSFER_CODE_EXPIRY: "expiry", lpb.TRANSFER_CODE_REFUND: "refund", lpb.TRANSFER_CODE_LEASE: "lease"}
_OUTCOMES = {mpb.OUTCOME_COMPLETED: "completed", mpb.OUTCOME_PARTIAL: "partial", mpb.OUTCOME_FAILED: "failed"}
_SETTLEMENTS = {mpb.SETTLEMENT_STATE_PENDING: "pending", mpb.SETTLEMENT_STATE_SETTLED: "settled",
                mpb.SETTLEMENT_STATE_RELEASED: "released", mpb.SETTLEMENT_STATE_EXPIRED: "expired",
                mpb.SETTLEMENT_STATE_REJECTED: "rejected"}
MODEL_KINDS = {rpb.MODEL_KIND_LLM: "llm", rpb.MODEL_KIND_TENSOR: "tensor"}


def uid(b: bytes) -> str | None:
    return str(uuid.UUID(bytes=b)) if len(b) == 16 else None


def timestamp(t: dt.datetime | None) -> str | None:
    """RFC 3339 in UTC ("...Z") of a database time."""
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if t is not None else None


def when(ts: Timestamp, present: bool = True) -> str | None:
    if not present:
        return None
    return ts.ToDatetime().isoformat(timespec="microseconds") + "Z"


def kind(a: lpb.Account) -> str:
    return _KINDS.get(a.kind, "unknown")


def available(a: lpb.Account) -> int:
    return a.credits_posted - a.debits_posted - a.debits_pending


def account(a: lpb.Account) -> dict:
    return {"object": "account", "account_id": uid(a.id), "kind": kind(a), "name": a.name or None,
            "available_micros": available(a), "held_micros": a.debits_pending,
            "spent_micros": a.debits_posted, "credited_micros": a.credits_posted,
            "created_at": when(a.created_at, a.HasField("created_at"))}


def transfer(t: lpb.Transfer, account_id: bytes) -> dict:
    held = t.code == lpb.TRANSFER_CODE_EARNING and t.flags & (lpb.TRANSFER_FLAG_POST_PENDING_TRANSFER
                                                              | lpb.TRANSFER_FLAG_VOID_PENDING_TRANSFER)
    if t.flags & lpb.TRANSFER_FLAG_EXPIRED:
        what = "expiry"
    elif held:  # a held earning released after its window, or voided (refunded to the partner)
        what = "earning_released" if t.flags & lpb.TRANSFER_FLAG_POST_PENDING_TRANSFER else "earning_voided"
    elif t.flags & lpb.TRANSFER_FLAG_POST_PENDING_TRANSFER:
        what = "settle"
    elif t.flags & lpb.TRANSFER_FLAG_VOID_PENDING_TRANSFER:
        what = "release"
    else:
        what = _CODES.get(t.code, f"code_{t.code}")
    debit = t.debit_account_id == account_id
    # A credit lease (a scheduler's hold for many jobs; posted for their exact
    # total when cleared) names its lease, not a job: its user_data is the
    # scheduler replica's id (pending) or its records' Merkle root (posted).
    lease = t.code == lpb.TRANSFER_CODE_LEASE
    lease_id = (t.pending_id or t.id) if lease else b""
    return {"id": uid(t.id), "seq": t.seq, "created_at": when(t.created_at, t.HasField("created_at")),
            "type": what, "direction": "debit" if debit else "credit", "amount_micros": t.amount,
            "pending": bool(t.flags & lpb.TRANSFER_FLAG_PENDING),
            "counterparty_account_id": uid(t.credit_account_id if debit else t.debit_account_id),
            "job_id": uid(t.user_data) if len(t.user_data) == 16 and not lease else None,
            "lease_id": uid(lease_id)}


def line_item(r: mpb.UsageRecord, *, provider: bool) -> dict:
    item = {"job_id": uid(r.job_id), "model": r.model, "node_id": r.node_id or None,
            "outcome": _OUTCOMES.get(r.outcome, "unknown"), "settlement": _SETTLEMENTS.get(r.settlement, "unknown"),
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens, "requests": r.requests,
            "cost_micros": r.cost_micros, "duration_ms": r.duration_ms,
            "started_at": when(r.started_at, r.HasField("started_at")),
            "finished_at": when(r.finished_at, r.HasField("finished_at"))}
    if provider:
        item.update(fee_micros=r.fee_micros, provider_micros=r.provider_micros,
                    settled_at=when(r.settled_at, r.HasField("settled_at")))
    return item


def bucket(b: mpb.UsageBucket) -> dict:
    return {"start": when(b.start), "key": b.key or None, "jobs": b.jobs, "prompt_tokens": b.prompt_tokens,
            "completion_tokens": b.completion_tokens, "requests": b.requests, "cost_micros": b.cost_micros,
            "settled_cost_micros": b.settled_cost_micros}


def node(n: rpb.Node) -> dict:
    return {
        "node_id": n.node_id.hex(), "endpoint": n.endpoint, "state": STATE_NAMES.get(n.state, "unknown"),
        "state_reason": reason_name(n.state_reason),
        "state_detail": n.state_detail, "region": n.region, "labels": dict(n.labels),
        "hardware": {"gpus": [{"name": g.name, "memory_bytes": g.memory_bytes, "count": g.count}
                              for g in n.hardware.gpus],
                     "cpu_cores": n.hardware.cpu_cores, "memory_bytes": n.hardware.memory_bytes},
        "models": [{"name": m.offer.name, "version": m.offer.version, "kind": MODEL_KINDS.get(m.offer.kind, "unknown"),
                    "verified": m.verified, "context_length": m.offer.context_length,
                    "canary_latency_us": m.canary_latency_us,
                    "price": {"per_million_input_tokens": m.offer.price.per_million_input_tokens,
                              "per_million_output_tokens": m.offer.price.per_million_output_tokens,
                              "per_request": m.offer.price.per_request}} for m in n.models],
        "load": {"in_flight": n.load.in_flight, "queue_depth": n.load.queue_depth,
                 "recent_latency_us": n.load.recent_latency_us} if n.HasField("load") else None,
        "registered_at": when(n.registered_at, n.HasField("registered_at")),
        "state_changed_at": when(n.state_changed_at, n.HasField("state_changed_at")),
        "agent_version": n.agent_version,
    }
