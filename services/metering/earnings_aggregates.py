"""Held earnings on clearing aggregates (one per node and window, see
idlegrid.metering.clearing): released after the release window
(ReleaseAggregates), or voided when the node's earnings are voided
(VoidAggregates, with refunds to the partners who paid for them: per
consumer, the provider share of that consumer's records, summing exactly to
the aggregate). The aggregate's records follow it (their earning state is
its: metering.usage_lines).

Only aggregates of CLEARED windows (the ledger has them) are claimed, FOR
UPDATE SKIP LOCKED for the length of the ledger call; the ledger's calls are
idempotent by aggregate id and let an aggregate end once.
"""

from __future__ import annotations

from collections import defaultdict

import grpc
import structlog

from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering.clearing_rules import refunds
from idlegrid.metering.earning_states import Earning, proven_by_ledger
from idlegrid.metering.earnings_store import VOID_TARGETS

log = structlog.get_logger("metering.earnings")

LEDGER_TIMEOUT_S = 10.0
_HELD = int(Earning.HELD)


async def claim_releases(conn, limit: int, suspended: list[str]) -> list:
    return await conn.fetch(
        f"""SELECT a.aggregate_id, a.amount_micros, '' AS reason FROM metering.clearing_aggregates a
              JOIN metering.clearing_windows w ON w.window_id = a.window_id AND w.state = 2
            WHERE a.earning = {_HELD} AND a.release_at <= clock_timestamp()
              AND NOT (a.node_id = ANY($2::text[]))
              AND NOT EXISTS (SELECT 1 FROM metering.earning_voids v
                              WHERE v.node_id = a.node_id AND a.recorded_from <= v.voided_through)
            ORDER BY a.release_at LIMIT $1 FOR UPDATE OF a SKIP LOCKED""", limit, suspended)


async def claim_voids(conn, limit: int, *, suspended: dict[str, str], node_id: str | None) -> list:
    """Held aggregates of nodes marked void (any record up to the mark) or
    ``suspended`` now; of ``node_id`` only, when given."""
    return await conn.fetch(
        f"""{VOID_TARGETS}
            SELECT a.aggregate_id, a.amount_micros, a.fee_bps, a.jobs, t.reason FROM targets t
              JOIN metering.clearing_aggregates a ON a.node_id = t.node_id AND a.earning = {_HELD}
                   AND a.recorded_from <= t.through
              JOIN metering.clearing_windows w ON w.window_id = a.window_id AND w.state = 2
            ORDER BY a.recorded_from LIMIT $1 FOR UPDATE OF a SKIP LOCKED""",
        limit, node_id, list(suspended), list(suspended.values()))


async def consumer_picos(conn, aggregate_ids: list) -> dict:
    """aggregate id -> {consumer: Σ cost_picos of its records}: the records
    of its window's leases on its node, provider and fee that cost something
    (clearing_rules.plan's groups)."""
    rows = await conn.fetch(
        """SELECT a.aggregate_id, u.consumer_account_id, sum(u.cost_picos) AS picos
             FROM metering.clearing_aggregates a
             JOIN metering.clearing_leases cl ON cl.window_id = a.window_id
             JOIN metering.usage u ON u.lease_id = cl.lease_id AND u.node_id = a.node_id
                  AND u.provider_account_id = a.provider_account_id AND u.fee_bps = a.fee_bps AND u.cost_picos > 0
            WHERE a.aggregate_id = ANY($1::uuid[]) GROUP BY 1, 2""", aggregate_ids)
    out: dict = defaultdict(dict)
    for r in rows:
        out[r["aggregate_id"]][r["consumer_account_id"].bytes] = int(r["picos"])
    return out


async def resolve(conn, aggregate_ids: list, states: list[Earning], notes: list[str]) -> None:
    """HELD aggregates to their final state (their records' earning is
    theirs: metering.usage_lines)."""
    args = (aggregate_ids, [int(s) for s in states], notes)
    await conn.execute(
        f"""UPDATE metering.clearing_aggregates a SET earning = x.earning, note = left(x.note, 1024),
                   resolved_at = clock_timestamp()
              FROM unnest($1::uuid[], $2::smallint[], $3::text[]) AS x(id, earning, note)
            WHERE a.aggregate_id = x.id AND a.earning = {_HELD}""", *args)


async def release(conn, ledger, limit: int, suspended: list[str]) -> tuple[int, bool, bool]:
    """(aggregates released, batch full, ledger failed)."""
    rows = await claim_releases(conn, limit, suspended)
    if not rows:
        return 0, False, False
    try:
        res = await ledger.ReleaseAggregates(
            lpb.ReleaseAggregatesRequest(aggregate_ids=[r["aggregate_id"].bytes for r in rows]),
            timeout=LEDGER_TIMEOUT_S)
    except grpc.aio.AioRpcError as e:
        log.warning("earnings.ledger_unavailable", code=e.code().name, details=e.details())
        return 0, len(rows) == limit, True
    done = await _record(conn, rows, list(res.results), Earning.RELEASED)
    return sum(s == Earning.RELEASED for s in done), len(rows) == limit, False


async def void(conn, ledger, limit: int, *, suspended: dict[str, str], node_id: str | None = None
               ) -> tuple[int, int, int, bool, bool]:
    """(aggregates voided, their jobs, micro-credits refunded, batch full, ledger failed)."""
    rows = await claim_voids(conn, limit, suspended=suspended, node_id=node_id)
    if not rows:
        return 0, 0, 0, False, False
    picos = await consumer_picos(conn, [r["aggregate_id"] for r in rows])
    req = lpb.VoidAggregatesRequest(aggregates=[
        lpb.VoidAggregate(aggregate_id=r["aggregate_id"].bytes, refunds=[
            lpb.Refund(consumer_account_id=c, amount=x)
            for c, x in refunds(picos[r["aggregate_id"]], r["fee_bps"], r["amount_micros"])])
        for r in rows])
    try:
        res = await ledger.VoidAggregates(req, timeout=LEDGER_TIMEOUT_S)
    except grpc.aio.AioRpcError as e:
        log.warning("earnings.ledger_unavailable", code=e.code().name, details=e.details())
        return 0, 0, 0, len(rows) == limit, True
    done = await _record(conn, rows, list(res.results), Earning.VOIDED)
    voided = [r for r, s in zip(rows, done, strict=True) if s == Earning.VOIDED]
    jobs = sum(r["jobs"] for r in voided)
    micros = sum(r["amount_micros"] for r in voided)
    if voided:
        log.info("earnings.aggregates_voided", aggregates=len(voided), jobs=jobs, micros=micros)
    return len(voided), jobs, micros, len(rows) == limit, False


async def _record(conn, rows, results: list[lpb.OperationResponse], wanted: Earning) -> list[Earning | None]:
    out = [proven_by_ledger(x, wanted) for x in results]
    ended = [(r, s) for r, s in zip(rows, out, strict=True) if s is not None]
    for r, x, s in zip(rows, results, out, strict=True):
        if s is None:
            log.error("earnings.aggregate_not_ended", aggregate_id=r["aggregate_id"].hex,
                      status=lpb.OperationStatus.Name(x.status))
    if ended:
        await resolve(conn, [r["aggregate_id"] for r, _ in ended], [s for _, s in ended],
                      [r["reason"] if s == Earning.VOIDED else "" for r, s in ended])
    return out


async def pending(conn, node_id: str) -> int:
    """The node's held aggregates that a void mark covers (still to void)."""
    return await conn.fetchval(
        f"""SELECT count(*) FROM metering.clearing_aggregates a
              JOIN metering.earning_voids v ON v.node_id = a.node_id
            WHERE a.earning = {_HELD} AND a.node_id = $1 AND a.recorded_from <= v.voided_through""", node_id)

