"""Metering's SQL for held earnings: the release and void queues (of per-job
earnings; a cleared record's earning follows its aggregate, see
earnings_aggregates), the nodes
whose earnings are voided, the providers' summaries, and check results.
Earning states are written into the statements as literals (from
:class:`Earning`) so that the planner uses the partial indexes
(``WHERE earning = 1``)."""

from __future__ import annotations

import asyncpg

from idlegrid.metering.earning_states import Earning

_HELD = int(Earning.HELD)
REASON_LEN_MAX = 1024


async def mark_voided(conn, node_ids: list[str], reasons: list[str], source: str) -> None:
    """Every held earning of these nodes for jobs recorded up to now is to be
    voided (``source``: registry or operator). Marks only move forward."""
    await conn.execute(
        """INSERT INTO metering.earning_voids (node_id, voided_through, reason, source)
           SELECT n, clock_timestamp(), left(r, $4), $3 FROM unnest($1::text[], $2::text[]) AS x(n, r)
           ON CONFLICT (node_id) DO UPDATE SET
             voided_through = greatest(metering.earning_voids.voided_through, excluded.voided_through),
             reason = excluded.reason, source = excluded.source, updated_at = clock_timestamp()""",
        node_ids, reasons, source, REASON_LEN_MAX)


# The nodes whose held earnings are to be voided, and up to when: marked
# (metering.earning_voids) or suspended now ($3 nodes, $4 reasons: every
# job); only node $2 when it is not NULL. (Per-job earnings and clearing
# aggregates are claimed from it alike.)
VOID_TARGETS = """WITH targets AS (
              SELECT node_id, max(voided_through) AS through, max(reason) AS reason FROM (
                SELECT node_id, voided_through, reason FROM metering.earning_voids
                UNION ALL
                SELECT n, 'infinity'::timestamptz, r FROM unnest($3::text[], $4::text[]) AS x(n, r)) AS t
              WHERE $2::text IS NULL OR node_id = $2 GROUP BY node_id)"""


async def claim_voids(conn, limit: int, *, suspended: dict[str, str] | None = None,
                      node_id: str | None = None) -> list:
    """Held earnings to void, locked for this worker (others skip them): of a
    node marked void (jobs recorded up to its mark), or ``suspended`` now
    (node -> reason; every job); of ``node_id`` only, when given. Driven
    from the nodes, through the index of held earnings by node."""
    suspended = suspended or {}
    return await conn.fetch(
        f"""{VOID_TARGETS}
            SELECT u.job_id, u.provider_micros, t.reason FROM targets t
              JOIN metering.usage u ON u.node_id = t.node_id AND u.earning = {_HELD} AND u.recorded_at <= t.through
                   AND u.lease_id IS NULL
            ORDER BY u.recorded_at LIMIT $1 FOR UPDATE OF u SKIP LOCKED""",
        limit, node_id, list(suspended), list(suspended.values()))


async def claim_releases(conn, limit: int, suspended: list[str]) -> list:
    """Held earnings due now, of nodes neither ``suspended`` nor marked void."""
    return await conn.fetch(
        f"""SELECT u.job_id, u.provider_micros FROM metering.usage u
            WHERE u.earning = {_HELD} AND u.earning_release_at <= clock_timestamp() AND u.lease_id IS NULL
              AND NOT (u.node_id = ANY($2::text[]))
              AND NOT EXISTS (SELECT 1 FROM metering.earning_voids v
                              WHERE v.node_id = u.node_id AND u.recorded_at <= v.voided_through)
            ORDER BY u.earning_release_at LIMIT $1 FOR UPDATE OF u SKIP LOCKED""", limit, suspended)


async def resolve(conn, job_ids: list, states: list[Earning], notes: list[str]) -> None:
    """Moves HELD earnings to their final state (RELEASED or VOIDED)."""
    await conn.execute(
        f"""UPDATE metering.usage u SET earning = x.earning, earning_note = left(x.note, $4),
                   earning_resolved_at = clock_timestamp()
              FROM unnest($1::uuid[], $2::smallint[], $3::text[]) AS x(job_id, earning, note)
            WHERE u.job_id = x.job_id AND u.earning = {_HELD}""",
        job_ids, [int(s) for s in states], notes, REASON_LEN_MAX)


async def void_pending(pool: asyncpg.Pool, node_id: str) -> int:
    """The node's held earnings that a void mark covers (still to void)."""
    return await pool.fetchval(
        f"""SELECT count(*) FROM metering.usage u JOIN metering.earning_voids v ON v.node_id = u.node_id
            WHERE u.earning = {_HELD} AND u.node_id = $1 AND u.recorded_at <= v.voided_through
              AND u.lease_id IS NULL""", node_id)


# Per earning state (and node): a provider's per-job earnings (records not on
# a lease) and its clearing aggregates (each record on a lease is in at most
# one, and earns what its aggregate does).
_SUMS = """SELECT {key} AS node_id, earning, sum(jobs)::bigint AS jobs, sum(micros) AS micros,
                  min(next_release_at) AS next_release_at FROM (
             SELECT node_id, earning, count(*) AS jobs, sum(provider_micros) AS micros,
                    min(earning_release_at) FILTER (WHERE earning = {held}) AS next_release_at
               FROM metering.usage WHERE provider_account_id = $1 AND lease_id IS NULL AND earning <> 0
              GROUP BY node_id, earning
             UNION ALL
             SELECT node_id, earning, sum(jobs), sum(amount_micros),
                    min(release_at) FILTER (WHERE earning = {held})
               FROM metering.clearing_aggregates WHERE provider_account_id = $1
              GROUP BY node_id, earning) AS e
            WHERE true {nodes}
            GROUP BY 1, earning"""


async def summary(pool: asyncpg.Pool, provider_account_id, nodes_max: int) -> tuple[list, list]:
    """(total, by node): per earning state (and node), the jobs, the
    micro-credits and the earliest release time of the provider's earnings;
    the first ``nodes_max`` nodes by id."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        total = await conn.fetch(_SUMS.format(key="''", nodes="", held=_HELD), provider_account_id)
        by_node = await conn.fetch(_SUMS.format(key="node_id", held=_HELD, nodes=(
            "AND node_id IN (SELECT node_id FROM metering.usage WHERE provider_account_id = $1"
            " AND lease_id IS NULL AND earning <> 0 UNION SELECT node_id FROM metering.clearing_aggregates"
            " WHERE provider_account_id = $1 ORDER BY node_id LIMIT $2)")) + " ORDER BY 1", provider_account_id,
            nodes_max)
    return list(total), list(by_node)


async def record_check(pool: asyncpg.Pool, job_id, result: int, detail: str):
    """(row, changed): sets the job's check verdict unless one is recorded;
    None when the job has no record."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """UPDATE metering.usage SET check_result = $2, check_detail = $3, checked_at = clock_timestamp()
               WHERE job_id = $1 AND check_result = 0 RETURNING job_id""", job_id, result, detail)
        if row is not None:
            return await conn.fetchrow("SELECT * FROM metering.usage_lines WHERE job_id = $1", job_id), True
        return await conn.fetchrow("SELECT * FROM metering.usage_lines WHERE job_id = $1", job_id), False
