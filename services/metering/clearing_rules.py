"""Batched clearing, the pure part: from the usage records of the leases that
are ready to clear, one window's plan -- each lease's charge, each node's
aggregate, the platform's fee, and the Merkle roots that tie each of them
to exactly its records (idlegrid.common.clearing holds the shared rules:
exact costs, one rounding per aggregate, the root).

    charged(lease)    = ceil(Σ cost_picos of its records / 10^6)
    amount(aggregate) = provider_micros(Σ cost_picos of the node's records, fee_bps)
    fee(window)       = Σ charged - Σ amounts

Ids are derived from what they settle (the window's from its leases, an
aggregate's from its window and node), so a window stored but not yet sent
to the ledger is sent again with the same ids after a crash.
``idlegrid ledger verify`` recomputes all of it from metering's rows
(idlegrid.ledger.audit_clearing keeps the same rules).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

from idlegrid.common.clearing import (
    PICOS_PER_MICRO,
    merkle_root_of_leaves,
    micros_ceil,
    provider_micros,
)

BPS_PER_UNIT = 10_000


def derive_id(*parts: bytes) -> bytes:
    """16 non-zero bytes derived from ``parts``."""
    h = hashlib.sha256(b"idlegrid.clearing\x00" + b"\x00".join(parts)).digest()[:16]
    return h if any(h) else b"\x01" * 16


def window_id(lease_ids: list[bytes]) -> bytes:
    return derive_id(b"window", *sorted(lease_ids))


def aggregate_id(window: bytes, node_id: str, provider: bytes, fee_bps: int) -> bytes:
    return derive_id(b"aggregate", window, node_id.encode(), provider, str(fee_bps).encode())


def provider_share_picos(picos: int, fee_bps: int) -> tuple[int, int]:
    """A record's exact provider share as a fraction (numerator over
    10^4 · 10^6 micro-credits)."""
    return picos * (BPS_PER_UNIT - fee_bps), BPS_PER_UNIT * PICOS_PER_MICRO


def distribute(total: int, numerators: list[int], denominator: int) -> list[int]:
    """Splits ``total`` (= floor(Σ numerators / denominator)) in proportion:
    each gets floor(its numerator / denominator), and the remainder goes one
    each to the largest fractional parts (ties: the earlier one), so the
    parts sum exactly to ``total``."""
    parts = [n // denominator for n in numerators]
    left = total - sum(parts)
    if left < 0 or left > len(parts):
        raise ValueError(f"cannot distribute {total} over shares summing to {sum(parts)}")
    order = sorted(range(len(parts)), key=lambda i: (-(numerators[i] % denominator), i))
    for i in order[:left]:
        parts[i] += 1
    return parts


@dataclass(slots=True)
class LeasePlan:
    lease_id: bytes
    consumer: bytes
    picos: int = 0
    charged: int = 0
    jobs: int = 0
    root: bytes = b""


@dataclass(slots=True)
class AggregatePlan:
    aggregate_id: bytes
    node_id: str
    provider: bytes
    fee_bps: int
    picos: int = 0
    amount: int = 0
    jobs: int = 0
    root: bytes = b""
    recorded_from: object = None  # the earliest recorded_at of its records (void marks)
    job_ids: list[bytes] = field(default_factory=list)
    shares: list[int] = field(default_factory=list)  # per job, the provider's part (sums to amount)


@dataclass(slots=True)
class WindowPlan:
    window_id: bytes
    leases: list[LeasePlan]
    aggregates: list[AggregatePlan]  # only those with an amount
    fee: int
    root: bytes
    jobs: int
    # job id -> (aggregate id or b"", provider part in micro-credits)
    per_job: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)


def plan(leases: list[tuple[bytes, bytes]], records: list) -> WindowPlan:
    """The window clearing ``leases`` ((lease id, consumer) each) with the
    usage ``records`` (clearing_store.RECORD_COLUMNS of metering.usage, each
    with its Merkle leaf) reserved on them. Records are sorted by job id once:
    every subset (a lease's, a node's) is then already in job-id order for
    its root."""
    wid = window_id([lid for lid, _ in leases])
    by_lease = {lid: LeasePlan(lid, consumer) for lid, consumer in leases}
    lease_leaves: dict[bytes, list[bytes]] = defaultdict(list)
    groups: dict[tuple, AggregatePlan] = {}
    group_jobs: dict[tuple, list] = defaultdict(list)  # (job id, cost_picos, leaf), in job-id order
    all_leaves = []
    keyed = sorted(((r["job_id"].bytes, r) for r in records), key=lambda p: p[0])
    for job, r in keyed:
        h, lease, provider, picos = r["leaf"], r["lease_id"].bytes, r["provider_account_id"], int(r["cost_picos"])
        provider = provider.bytes if provider is not None else b""
        all_leaves.append(h)
        lp = by_lease[lease]
        lp.picos += picos
        lp.jobs += 1
        lease_leaves[lease].append(h)
        if provider and picos:
            key = (r["node_id"], provider, r["fee_bps"])
            ap = groups.get(key)
            if ap is None:
                ap = groups[key] = AggregatePlan(aggregate_id(wid, *key), *key)
            ap.picos += picos
            ap.jobs += 1
            if ap.recorded_from is None or r["recorded_at"] < ap.recorded_from:
                ap.recorded_from = r["recorded_at"]
            group_jobs[key].append((job, picos, h))
    for lp in by_lease.values():
        lp.charged = micros_ceil(lp.picos)
        lp.root = merkle_root_of_leaves(lease_leaves.get(lp.lease_id, []))
    per_job: dict[bytes, tuple[bytes, int]] = dict.fromkeys((j for j, _ in keyed), (b"", 0))
    aggregates = []
    for key, ap in sorted(groups.items()):
        ap.amount = provider_micros(ap.picos, ap.fee_bps)
        if ap.amount == 0:
            continue
        js = group_jobs[key]
        ap.root = merkle_root_of_leaves([h for _, _, h in js])
        _, denominator = provider_share_picos(0, ap.fee_bps)
        ap.job_ids = [j for j, _, _ in js]
        ap.shares = distribute(ap.amount, [provider_share_picos(c, ap.fee_bps)[0] for _, c, _ in js], denominator)
        for j, s in zip(ap.job_ids, ap.shares, strict=True):
            per_job[j] = (ap.aggregate_id, s)
        aggregates.append(ap)
    charged = sum(lp.charged for lp in by_lease.values())
    fee = charged - sum(a.amount for a in aggregates)
    return WindowPlan(wid, sorted(by_lease.values(), key=lambda lp: lp.lease_id), aggregates, fee,
                      merkle_root_of_leaves(all_leaves), len(keyed), per_job)


def refunds(consumer_picos: dict[bytes, int], fee_bps: int, amount: int) -> list[tuple[bytes, int]]:
    """A voided aggregate's refunds: per consumer (Σ cost_picos of that
    consumer's records in it), the provider share of those records, exact,
    then distributed so that the refunds sum to ``amount``; consumers in
    byte order, non-zero refunds only."""
    consumers = sorted(consumer_picos)
    _, denominator = provider_share_picos(0, fee_bps)
    parts = distribute(amount, [provider_share_picos(consumer_picos[c], fee_bps)[0] for c in consumers],
                       denominator)
    return [(c, x) for c, x in zip(consumers, parts, strict=True) if x]
