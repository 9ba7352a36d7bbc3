"""Metering's SQL: records (inserted many at once), queries, and the per-job
settlement outbox.

Settlement states are written into the statements as literals (from
:class:`Settlement`), not bound as parameters, so that the planner can use the
outbox's partial index (``WHERE settlement = 1``)."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from idlegrid.metering.earning_states import Earning
from idlegrid.metering.leases import LeaseState
from idlegrid.metering.states import Settlement
from idlegrid.metering.usage import COLUMNS, LEASE_AT, SQL_TYPES

_PENDING, _SETTLED = int(Settlement.PENDING), int(Settlement.SETTLED)
_TAKING_STATES = f"({int(LeaseState.OPEN)}, {int(LeaseState.CLOSED)})"  # a lease in these takes records

# Many records in one statement: one array per column, unnested. A record
# reserved on a lease is inserted only while its lease takes records (OPEN or
# CLOSED, for the same consumer); the lease row is locked FOR KEY SHARE, so
# clearing (which locks it FOR UPDATE before reading its records) never misses
# a record committed concurrently.
_UNNEST = ", ".join(f"${i}::{t}[]" for i, t in enumerate(SQL_TYPES.values(), start=1))
_INSERT_MANY = (
    f"""WITH input AS (SELECT * FROM unnest({_UNNEST}) AS t({', '.join(COLUMNS)})),
         open_leases AS (
           SELECT lease_id, consumer_account_id FROM metering.leases
            WHERE lease_id IN (SELECT lease_id FROM input WHERE lease_id IS NOT NULL)
              AND state IN {_TAKING_STATES}
              FOR KEY SHARE)
       INSERT INTO metering.usage ({', '.join(COLUMNS)}, settlement)
       SELECT i.*, {_PENDING} FROM input i
        WHERE i.lease_id IS NULL OR EXISTS (
          SELECT 1 FROM open_leases l
           WHERE l.lease_id = i.lease_id AND l.consumer_account_id = i.consumer_account_id)
       ON CONFLICT (job_id) DO NOTHING RETURNING """)


async def insert_many(conn, rows: list[tuple], *, whole_rows: bool) -> list:
    """Inserts the new ones of ``rows`` (``usage.validate``'s tuples, distinct
    job ids) in one statement; returns the inserted rows (whole, or only their
    job ids). A row not inserted already exists, or its lease takes no records."""
    columns = [list(c) for c in zip(*rows, strict=True)]
    return await conn.fetch(_INSERT_MANY + ("*" if whole_rows else "job_id"), *columns)


# Records that are all new, stored whole or not at all. Each lease of the
# input is locked FOR KEY SHARE as in _INSERT_MANY; when one of them takes no
# records (or not for that consumer) nothing is inserted, and a job id that is
# stored already fails the statement (unique violation): either way nothing
# is written and the caller takes the careful path (insert_many).
_PAIRS = "SELECT DISTINCT lease_id, consumer_account_id FROM input WHERE lease_id IS NOT NULL"
_TAKING = (
    f"""SELECT l.lease_id, l.consumer_account_id FROM metering.leases l
         WHERE l.lease_id IN (SELECT lease_id FROM pairs)
           AND l.state IN {_TAKING_STATES} FOR KEY SHARE""")
_INSERT_ALL = (
    f"""WITH input AS (SELECT * FROM unnest({_UNNEST}) AS t({', '.join(COLUMNS)})),
         pairs AS ({_PAIRS}),
         taking AS ({_TAKING})
       INSERT INTO metering.usage ({', '.join(COLUMNS)}, settlement)
       SELECT i.*, {_PENDING} FROM input i
        WHERE (SELECT count(*) FROM pairs) = (SELECT count(*) FROM pairs JOIN taking USING (lease_id, consumer_account_id))
       RETURNING job_id""")
_LEASES_TAKING = (
    f"""SELECT lease_id, consumer_account_id FROM metering.leases
         WHERE lease_id = ANY($1::uuid[]) AND state IN {_TAKING_STATES}
           FOR KEY SHARE""")
COPY_ROWS_MIN = 64  # from this many rows a binary COPY costs less than one statement's arrays


async def store_new(conn, rows: list[tuple]) -> bool:
    """The fast way to store records that are all new (the usual case), on a
    connection outside any transaction: True when every row is stored and
    committed; False when nothing was written, because a job id is stored
    already or a lease takes no records (the caller then uses insert_many).

    A few rows go in one statement, which is its own transaction: one round
    trip. Many go by binary COPY (no per-row statement work) in a
    transaction that first locks their leases."""
    if len(rows) < COPY_ROWS_MIN:
        try:
            stored = await conn.fetch(_INSERT_ALL, *[list(c) for c in zip(*rows, strict=True)])
        except asyncpg.UniqueViolationError:
            return False
        return len(stored) == len(rows)
    pairs = {(r[LEASE_AT], r[1]) for r in rows if r[LEASE_AT] is not None}
    try:
        async with conn.transaction():
            if pairs:
                found = await conn.fetch(_LEASES_TAKING, list({lease for lease, _ in pairs}))
                if not pairs <= {(r["lease_id"], r["consumer_account_id"]) for r in found}:
                    raise _NotAllTaking
            await conn.copy_records_to_table("usage", schema_name="metering", columns=COLUMNS, records=rows)
    except (asyncpg.UniqueViolationError, _NotAllTaking):
        return False
    return True


class _NotAllTaking(Exception):
    """A lease of the rows takes no records: roll back, store nothing."""


async def get_many(conn, job_ids: list) -> list:
    """Stored records as line items (metering.usage_lines)."""
    return await conn.fetch("SELECT * FROM metering.usage_lines WHERE job_id = ANY($1::uuid[])", job_ids)


async def delete_new(conn, job_ids: list) -> None:
    """Takes back rows inserted in the current transaction (a caller's batch
    that failed as a whole)."""
    await conn.execute("DELETE FROM metering.usage WHERE job_id = ANY($1::uuid[])", job_ids)


async def get(pool: asyncpg.Pool, job_id) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM metering.usage_lines WHERE job_id = $1", job_id)


def where(f: dict) -> tuple[str, list]:
    """A WHERE clause for the filter dict (column -> value; since/until)."""
    conds, args = [], []
    for col in ("consumer_account_id", "provider_account_id", "node_id", "model", "earning"):
        if f.get(col) is not None:
            args.append(f[col])
            conds.append(f"{col} = ${len(args)}")
    if f.get("since") is not None:
        args.append(f["since"])
        conds.append(f"finished_at >= ${len(args)}")
    if f.get("until") is not None:
        args.append(f["until"])
        conds.append(f"finished_at < ${len(args)}")
    return (" WHERE " + " AND ".join(conds)) if conds else "", args


async def page(pool, f: dict, limit: int, after: tuple | None) -> list:
    clause, args = where(f)
    if after is not None:
        args.extend(after)
        cursor = f"(finished_at, job_id) < (${len(args) - 1}, ${len(args)})"
        clause = clause + (" AND " if clause else " WHERE ") + cursor
    args.append(limit)
    return await pool.fetch(
        f"SELECT * FROM metering.usage_lines{clause} ORDER BY finished_at DESC, job_id DESC LIMIT ${len(args)}", *args)


async def buckets(pool, f: dict, bucket_s: int, group_col: str | None, rows_max: int) -> list:
    clause, args = where(f)
    args.append(timedelta(seconds=bucket_s))
    key = group_col or "''"
    args.append(rows_max)
    return await pool.fetch(
        f"""SELECT date_bin(${len(args) - 1}::interval, finished_at, 'epoch') AS start, {key} AS key,
                   count(*) AS jobs, sum(prompt_tokens) AS prompt_tokens,
                   sum(completion_tokens) AS completion_tokens, sum(requests) AS requests,
                   sum(cost_micros) AS cost_micros, sum(fee_micros) AS fee_micros,
                   sum(provider_micros) AS provider_micros,
                   sum(cost_micros) FILTER (WHERE settlement = {_SETTLED}) AS settled_cost_micros
              FROM metering.usage_lines{clause} GROUP BY 1, 2 ORDER BY 1, 2 LIMIT ${len(args)}""", *args)


async def claim(conn, limit: int) -> list:
    """Pending per-job settlements due now, locked for this worker (others
    skip them). Records on a lease are cleared with their lease instead."""
    return await conn.fetch(
        f"""SELECT job_id, provider_account_id, cost_micros, fee_bps, earnings_hold_s, attempts FROM metering.usage
            WHERE settlement = {_PENDING} AND lease_id IS NULL AND next_attempt_at <= clock_timestamp()
            ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED""", limit)


async def finish(conn, job_id, settlement: Settlement, fee: int, provider: int, error: str,
                 earning: Earning = Earning.NONE) -> None:
    """Moves a PENDING record to its final state (a final state never changes),
    and its provider share to ``earning``: HELD until the record's release
    window is over, or POSTED."""
    await conn.execute(
        f"""UPDATE metering.usage SET settlement = $2, fee_micros = $3, provider_micros = $4,
                  settlement_error = $5, settled_at = clock_timestamp(), attempts = attempts + 1,
                  earning = $6::smallint, earning_release_at = CASE WHEN $6::smallint = {int(Earning.HELD)}
                    THEN clock_timestamp() + make_interval(secs => earnings_hold_s) END
            WHERE job_id = $1 AND settlement = {_PENDING}""", job_id, int(settlement), fee, provider, error,
        int(earning))


async def retry_later(conn, job_id, delay_s: float, error: str) -> None:
    """Keeps a record PENDING, due again after ``delay_s``."""
    await conn.execute(
        f"""UPDATE metering.usage SET attempts = attempts + 1, settlement_error = $3,
                  next_attempt_at = clock_timestamp() + make_interval(secs => $2)
            WHERE job_id = $1 AND settlement = {_PENDING}""", job_id, delay_s, error)
