"""A provider's earnings summary: the store's rows (per earning state, and
per node) to the proto's EarningTotals."""

from __future__ import annotations

from idlegrid.metering.earning_states import Earning
from idlegrid.metering.v1 import metering_pb2 as pb

NODES_MAX = 1000
_FIELDS = {Earning.POSTED: "posted", Earning.RELEASED: "released", Earning.HELD: "held", Earning.VOIDED: "voided"}


def _totals(rows) -> pb.EarningTotals:
    t = pb.EarningTotals()
    for r in rows:
        name = _FIELDS[Earning(r["earning"])]
        setattr(t, f"{name}_micros", getattr(t, f"{name}_micros") + int(r["micros"] or 0))
        setattr(t, f"{name}_jobs", getattr(t, f"{name}_jobs") + r["jobs"])
        if r["next_release_at"] is not None:
            t.next_release_at.FromDatetime(r["next_release_at"])
    t.available_micros = t.posted_micros + t.released_micros
    return t


def response(total, by_node) -> pb.GetEarningsResponse:
    nodes: dict[str, list] = {}
    for r in by_node:
        nodes.setdefault(r["node_id"], []).append(r)
    return pb.GetEarningsResponse(total=_totals(total),
                                  by_node=[pb.NodeEarnings(node_id=n, totals=_totals(rows))
                                           for n, rows in sorted(nodes.items())])
