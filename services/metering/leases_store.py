"""Metering's SQL for credit leases, and the queue clearing takes them from.

Contract for clearing (``leases_to_clear``)
------------------------------------------
``leases_to_clear(conn, now)`` returns the leases clearing must settle now,
oldest first, each row with every ``metering.leases`` column plus
``records`` (its usage records) and ``why``:

- ``closed``: CLOSED by its scheduler and all of its ``jobs`` records are here;
- ``expired``: OPEN or CLOSED past ``use_until + max_job_s + slack_s``: no job
  reserved on it can still be answered, so no record of it can still count
  (its scheduler crashed, or a record never came: the job was not answered);
- ``opening``: OPENING for longer than ``opening_s``: the ledger may or may
  not have granted the hold (metering crashed around the call). Clearing
  finds out on the ledger (the hold's transfer id is the lease id) and voids
  it (VOIDED) or charges it like an expired lease (CLEARED, ``amount`` set).

Records and clearing meet on the lease row: a record is inserted only while
its lease is OPEN or CLOSED, under FOR KEY SHARE of the lease row
(store.insert_many). Clearing must lock the lease row FOR UPDATE, then read
its records, then move it to CLEARED or VOIDED (``finish``) in the same
transaction; a record arriving after that is refused (FAILED_PRECONDITION),
so a cleared lease's record set never changes.
"""

from __future__ import annotations

from datetime import datetime

from idlegrid.metering.leases import LeaseState, check

OPENING_S = 60.0  # more than the ledger call's timeout, so an OpenLease in flight is never cleared under it
SLACK_S = 30.0  # after use_until + max_job_s: records in flight have landed
CLEAR_MAX = 4_000  # a ClearWindow's leases

_OPENING, _OPEN, _CLOSED = int(LeaseState.OPENING), int(LeaseState.OPEN), int(LeaseState.CLOSED)
_COLS = ("lease_id", "consumer_account_id", "replica_id", "amount_min", "amount_max", "use_until", "max_job_s")


async def create(conn, values: dict):
    """(row, created): records a new OPENING lease, or returns the one with its id."""
    row = await conn.fetchrow(
        f"INSERT INTO metering.leases ({', '.join(_COLS)}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
        "ON CONFLICT (lease_id) DO NOTHING RETURNING *", *(values[c] for c in _COLS))
    if row is not None:
        return row, True
    return await get(conn, values["lease_id"]), False


async def get(conn, lease_id):
    return await conn.fetchrow("SELECT * FROM metering.leases WHERE lease_id = $1", lease_id)


async def opened(conn, lease_id, amount: int, available: int, held_elsewhere: int):
    """OPENING -> OPEN, holding ``amount``; None if it is no longer OPENING."""
    check(LeaseState.OPENING, LeaseState.OPEN)
    return await conn.fetchrow(
        f"""UPDATE metering.leases SET state = {_OPEN}, amount = $2, available = $3, held_elsewhere = $4,
                  opened_at = clock_timestamp()
            WHERE lease_id = $1 AND state = {_OPENING} RETURNING *""", lease_id, amount, available, held_elsewhere)


async def refused(conn, lease_id, available: int, held_elsewhere: int, note: str):
    """OPENING -> REFUSED (nothing held); None if it is no longer OPENING."""
    check(LeaseState.OPENING, LeaseState.REFUSED)
    return await conn.fetchrow(
        f"""UPDATE metering.leases SET state = {int(LeaseState.REFUSED)}, available = $2, held_elsewhere = $3,
                  note = $4 WHERE lease_id = $1 AND state = {_OPENING} RETURNING *""",
        lease_id, available, held_elsewhere, note)


async def close(conn, lease_id, jobs: int):
    """OPEN -> CLOSED with ``jobs``; None if it is not OPEN."""
    check(LeaseState.OPEN, LeaseState.CLOSED)
    return await conn.fetchrow(
        f"""UPDATE metering.leases SET state = {_CLOSED}, jobs = $2, closed_at = clock_timestamp()
            WHERE lease_id = $1 AND state = {_OPEN} RETURNING *""", lease_id, jobs)


async def records(conn, lease_id) -> int:
    return await conn.fetchval("SELECT count(*) FROM metering.usage WHERE lease_id = $1", lease_id)


async def finish(conn, lease_id, src: LeaseState, dst: LeaseState, *, amount: int | None = None,
                 note: str = "") -> bool:
    """``src`` -> CLEARED or VOIDED (clearing, with the row locked FOR UPDATE);
    ``amount``: what the hold turned out to be (a lease cleared from OPENING)."""
    check(src, dst)
    done = await conn.fetchval(
        f"""UPDATE metering.leases SET state = {int(dst)}, cleared_at = clock_timestamp(),
                  amount = coalesce($3, amount), note = $4
            WHERE lease_id = $1 AND state = $2 RETURNING true""", lease_id, int(src), amount, note)
    return bool(done)


async def leases_to_clear(conn, now: datetime, *, opening_s: float = OPENING_S, slack_s: float = SLACK_S,
                          limit: int = CLEAR_MAX) -> list:
    """The leases clearing must settle now (see the module's contract).

    Only the candidates (CLOSED, expired, or OPENING too long) have their
    records counted: an OPEN lease in use is never scanned, and a CLOSED one
    is counted once per pass (on the usage_lease index)."""
    return await conn.fetch(
        f"""WITH cand AS (
              SELECT l.* FROM metering.leases l
               WHERE l.state IN ({_OPENING}, {_OPEN}, {_CLOSED})
                 AND CASE WHEN l.state = {_OPENING}
                          THEN l.created_at < $1::timestamptz - make_interval(secs => $2)
                          ELSE l.state = {_CLOSED} OR l.use_until + make_interval(secs => l.max_job_s + $3) < $1
                     END)
            SELECT c.*, r.records,
                   CASE WHEN c.state = {_OPENING} THEN 'opening'
                        WHEN c.state = {_CLOSED} AND r.records = c.jobs THEN 'closed'
                        ELSE 'expired' END AS why
              FROM cand c
              CROSS JOIN LATERAL (SELECT count(*) AS records FROM metering.usage u
                                   WHERE u.lease_id = c.lease_id) r
             WHERE c.state = {_OPENING} OR r.records = c.jobs
                OR c.use_until + make_interval(secs => c.max_job_s + $3) < $1
             ORDER BY c.created_at LIMIT $4""", now, opening_s, slack_s, limit)
