"""Batched clearing, for ``idlegrid ledger verify``: each settlement aggregate
proved against the usage records it settles (metering's tables, read in the
same snapshot as the books: one Postgres in one-machine mode).

Fed every transfer in seq order, then, for every clearing window metering
stored, it recomputes from the usage records alone (idlegrid.common.clearing
rules; idlegrid.metering.clearing_rules plans the same way):

- per lease: its records' Merkle root and charge = ceil(Σ cost_picos / 10^6);
- per (node, provider, fee) of the window: the aggregate = provider share of
  Σ cost_picos, floored once, and its root; the fee = Σ charges - Σ aggregates;
  the window's root over all its records;

and checks them against metering's stored rows (the full 32-byte roots) and
against the ledger's transfers (amount, accounts, the root's first 16 bytes
in user_data). Every lease post or void and every aggregate and window fee
transfer on the ledger must have its clearing row; every record of a cleared
lease must be in that lease's window. So a usage record changed, dropped or
added after clearing fails verify like a changed transfer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from idlegrid.common.clearing import (
    RecordFacts,
    facts_of_row,
    merkle_root,
    micros_ceil,
    provider_micros,
    root_prefix,
)
from idlegrid.ledger.codes import CODE_EARNING, CODE_FEE, CODE_LEASE, POST, VOID
from idlegrid.ledger.ids import ESCROW, derive
from idlegrid.ledger.values import StoredTransfer

CLEARED = 2


def _b(v) -> bytes:
    return v.bytes if v is not None else b""


@dataclass
class ClearingAudit:
    report: Callable[[str], None]
    _lease_ends: dict[bytes, StoredTransfer] = field(default_factory=dict)  # lease id -> its post or void
    _aggregates: dict[bytes, StoredTransfer] = field(default_factory=dict)  # id -> earning transfer
    _fees: dict[bytes, StoredTransfer] = field(default_factory=dict)  # window id -> fee transfer
    windows: int = 0

    def transfer(self, t: StoredTransfer) -> None:
        if t.flags & (POST | VOID):
            if t.code == CODE_LEASE:
                self._lease_ends[t.pending_id] = t
        elif t.code == CODE_EARNING and t.debit_account_id == ESCROW and t.id != derive("earning", t.user_data):
            self._aggregates[t.id] = t
        elif t.code == CODE_FEE and t.debit_account_id == ESCROW and t.id != derive("fee", t.user_data):
            self._fees[t.id] = t

    async def end(self, conn) -> None:
        """Checks metering's clearing rows and records (on ``conn``, in the
        books' snapshot) against the recomputation and the transfers."""
        if await conn.fetchval("SELECT to_regclass('metering.clearing_windows')") is None:
            for what, d in (("lease", self._lease_ends), ("aggregate", self._aggregates), ("fee", self._fees)):
                if d:
                    self.report(f"{len(d)} {what} transfer(s) of clearing, but metering has no clearing tables")
            return
        windows = {r["window_id"].bytes: r for r in await conn.fetch("SELECT * FROM metering.clearing_windows")}
        leases = {r["lease_id"].bytes: r for r in await conn.fetch("SELECT * FROM metering.clearing_leases")}
        aggs = {r["aggregate_id"].bytes: r for r in await conn.fetch("SELECT * FROM metering.clearing_aggregates")}
        records: dict[bytes, list] = defaultdict(list)
        async for r in conn.cursor(
                """SELECT u.*, c.window_id, c.aggregate_id, c.provider_micros AS share,
                          cl.window_id AS lease_window FROM metering.usage u
                     LEFT JOIN metering.usage_cleared c ON c.job_id = u.job_id
                     LEFT JOIN metering.clearing_leases cl ON cl.lease_id = u.lease_id
                    WHERE c.job_id IS NOT NULL OR cl.lease_id IS NOT NULL""", prefetch=5000):
            w = _b(r["window_id"])
            if w != _b(r["lease_window"]):
                self.report(f"usage record {r['job_id']}: in window {w.hex() or 'none'}, but its lease was "
                            f"cleared in {_b(r['lease_window']).hex()} (a record added or moved after clearing)")
            records[w or _b(r["lease_window"])].append(r)
        for r in await conn.fetch(
                """SELECT c.job_id, c.window_id FROM metering.usage_cleared c
                    WHERE NOT EXISTS (SELECT 1 FROM metering.usage u WHERE u.job_id = c.job_id)"""):
            self.report(f"usage record {r['job_id']}: cleared in window {r['window_id'].bytes.hex()}, but "
                        "the record is missing")
        by_window_leases: dict[bytes, list] = defaultdict(list)
        for lid, row in leases.items():
            by_window_leases[row["window_id"].bytes].append(lid)
        by_window_aggs: dict[bytes, list] = defaultdict(list)
        for aid, row in aggs.items():
            by_window_aggs[row["window_id"].bytes].append(aid)
        for wid, w in windows.items():
            self.windows += 1
            self._window(wid, w, records.get(wid, []), {k: leases[k] for k in by_window_leases[wid]},
                         {k: aggs[k] for k in by_window_aggs[wid]})
        for lid in self._lease_ends.keys() - leases.keys():
            self.report(f"lease {lid.hex()}: ended on the ledger without a clearing row in metering")
        for aid in self._aggregates.keys() - aggs.keys():
            self.report(f"aggregate transfer {aid.hex()}: no clearing aggregate in metering")
        for wid in self._fees.keys() - windows.keys():
            self.report(f"fee transfer {wid.hex()}: no clearing window in metering")

    def _window(self, wid: bytes, w, records: list, leases: dict, aggs: dict) -> None:
        name, rep = f"window {wid.hex()}", self.report
        on_ledger = w["state"] == CLEARED or wid in self._fees or any(k in self._lease_ends for k in leases)
        facts = [facts_of_row(r) for r in records]
        if merkle_root(facts) != bytes(w["root"]):
            rep(f"{name}: its records' Merkle root differs from the stored root (a record changed, added or "
                "dropped)")
        if len(records) != w["jobs"]:
            rep(f"{name}: {len(records)} records, stored {w['jobs']}")
        per_lease: dict[bytes, list[RecordFacts]] = defaultdict(list)
        groups: dict[tuple, list[RecordFacts]] = defaultdict(list)
        group_rows: dict[tuple, list] = defaultdict(list)  # the same records' rows (their stored shares)
        for r, f in zip(records, facts, strict=True):
            per_lease[f.lease_id].append(f)
            if f.provider_account_id and f.cost_picos:
                key = (r["node_id"], f.provider_account_id, r["fee_bps"])
                groups[key].append(f)
                group_rows[key].append(r)
            elif r["aggregate_id"] is not None or r["share"]:
                rep(f"{name}: usage record {r['job_id']} earns nothing, but is stored with aggregate "
                    f"{_b(r['aggregate_id']).hex() or 'none'} and a share of {r['share']} µcr")
        charged = 0
        for lid in per_lease.keys() - leases.keys():
            rep(f"{name}: records of lease {lid.hex()}, which the window does not clear")
        for lid, row in leases.items():
            fs = per_lease.get(lid, [])
            root, charge = merkle_root(fs), micros_ceil(sum(f.cost_picos for f in fs))
            charged += charge
            if root != bytes(row["root"]) or charge != row["charged_micros"]:
                rep(f"{name}: lease {lid.hex()} recomputes to {charge} µcr (stored {row['charged_micros']}) "
                    f"or its records' root differs from the stored one")
            t = self._lease_ends.get(lid)
            if t is None:
                if on_ledger:
                    rep(f"{name}: lease {lid.hex()} is not ended on the ledger")
            elif (t.amount if t.flags & POST else 0) != charge or t.user_data not in (root_prefix(root), b""):
                rep(f"{name}: lease {lid.hex()} posted for {t.amount if t.flags & POST else 0} µcr with root "
                    f"{t.user_data.hex()}, recomputed {charge} µcr and {root_prefix(root).hex()}")
        paid = 0
        matched = set()
        for (node, provider, fee_bps), fs in groups.items():
            amount = provider_micros(sum(f.cost_picos for f in fs), fee_bps)
            root = merkle_root(fs)
            hits = [k for k, a in aggs.items() if a["node_id"] == node and a["provider_account_id"].bytes == provider
                    and a["fee_bps"] == fee_bps]
            if amount == 0:
                if hits or any(r["aggregate_id"] is not None or r["share"] for r in group_rows[(node, provider,
                                                                                                  fee_bps)]):
                    rep(f"{name}: node {node} has an aggregate or shares, but its records earn nothing")
                continue
            paid += amount
            if len(hits) != 1:
                rep(f"{name}: node {node} earns {amount} µcr, but has {len(hits)} aggregates")
                continue
            aid = hits[0]
            matched.add(aid)
            a = aggs[aid]
            rows = group_rows[(node, provider, fee_bps)]
            if any(_b(r["aggregate_id"]) != aid for r in rows) or sum(r["share"] or 0 for r in rows) != amount:
                rep(f"{name}: the records of aggregate {aid.hex()} are not all stored in it, or their shares "
                    f"do not sum to its {amount} µcr")
            if a["amount_micros"] != amount or bytes(a["root"]) != root:
                rep(f"{name}: aggregate {aid.hex()} of node {node} recomputes to {amount} µcr (stored "
                    f"{a['amount_micros']}) or its records' root differs from the stored one")
            t = self._aggregates.get(aid)
            if t is None:
                if on_ledger:
                    rep(f"{name}: aggregate {aid.hex()} is not on the ledger")
            elif t.amount != amount or t.credit_account_id != provider or t.user_data != root_prefix(root):
                rep(f"{name}: aggregate transfer {aid.hex()} moved {t.amount} µcr with root {t.user_data.hex()}, "
                    f"recomputed {amount} µcr and {root_prefix(root).hex()}")
        for aid in aggs.keys() - matched:
            rep(f"{name}: aggregate {aid.hex()} settles no records of the window")
        fee = charged - paid
        if fee != w["fee_micros"] or charged != w["charged_micros"]:
            rep(f"{name}: fee recomputes to {fee} µcr of {charged} charged (stored {w['fee_micros']} of "
                f"{w['charged_micros']})")
        t = self._fees.get(wid)
        if t is not None and (t.amount != fee or t.user_data != root_prefix(merkle_root(facts))):
            rep(f"{name}: fee transfer moved {t.amount} µcr with root {t.user_data.hex()}, recomputed {fee} µcr")
        elif t is None and fee and on_ledger:
            rep(f"{name}: fee of {fee} µcr is not on the ledger")
