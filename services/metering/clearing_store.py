"""Metering's SQL for batched clearing: the records of the leases to clear,
a window stored with everything its ledger call carries (and each record's
window, aggregate and share, in metering.usage_cleared), the windows still to send, and marking them
cleared. States are written into the statements as literals."""

from __future__ import annotations

from asyncpg.pgproto import pgproto

from idlegrid.metering.clearing_rules import WindowPlan
from idlegrid.metering.earning_states import Earning

STORED, CLEARED = 1, 2
_HELD, _POSTED = int(Earning.HELD), int(Earning.POSTED)

_ZERO16 = "'\\x00000000000000000000000000000000'::bytea"
# A record's Merkle leaf, computed by PostgreSQL next to the row (C, on the
# database's core) instead of by this process: exactly
# idlegrid.common.clearing.leaf(facts_of_row(row)) -- SHA-256 of 0x00 and the
# record's canonical bytes (five 16-byte ids, seven big-endian 64-bit
# integers, the outcome's byte). ``ledger verify`` recomputes every leaf in
# Python from the same row, and tests/metering/test_clearing_leaf.py holds
# the two equal.
LEAF_SQL = f"""sha256('\\x00'::bytea || uuid_send(job_id) || uuid_send(consumer_account_id)
    || coalesce(uuid_send(provider_account_id), {_ZERO16})
    || CASE WHEN node_id = '' THEN {_ZERO16}
            WHEN node_id ~ '^[0-9a-fA-F]{{32}}$' THEN decode(node_id, 'hex')
            ELSE substring(sha256(convert_to(node_id, 'UTF8')) FROM 1 FOR 16) END
    || coalesce(uuid_send(lease_id), {_ZERO16})
    || int8send(prompt_tokens) || int8send(completion_tokens) || int8send(requests)
    || int8send(price_input_per_mtok) || int8send(price_output_per_mtok) || int8send(price_per_request)
    || int8send(cost_picos) || substring(int2send(outcome) FROM 2))"""
# What clearing_rules.plan reads of a record.
RECORD_COLUMNS = f"job_id, lease_id, provider_account_id, cost_picos, node_id, fee_bps, recorded_at, {LEAF_SQL} AS leaf"


def _u(b: bytes):
    return pgproto.UUID(b)


async def lock_leases(conn, ready: list) -> list:
    """The rows of ``ready`` (leases_store.leases_to_clear) whose lease is
    still to clear, each now locked FOR UPDATE for this transaction (another
    replica's, locked, are skipped): no record joins them after this."""
    if not ready:
        return []
    locked = await conn.fetch(
        """SELECT lease_id FROM metering.leases WHERE lease_id = ANY($1::uuid[]) AND state IN (1, 2, 3)
           ORDER BY lease_id FOR UPDATE SKIP LOCKED""", [r["lease_id"] for r in ready])
    keep = {r["lease_id"] for r in locked}
    return [r for r in ready if r["lease_id"] in keep]


async def records_of(conn, lease_ids: list[bytes]) -> list:
    """The usage records reserved on these leases (not yet cleared: the
    leases are). Not locked one by one: the caller holds their leases FOR
    UPDATE (lock_leases), and a record is inserted only under FOR KEY SHARE
    of its lease, so no record joins or leaves the set; a record is never
    updated (store_window writes its clearing to metering.usage_cleared)."""
    return await conn.fetch(
        f"SELECT {RECORD_COLUMNS} FROM metering.usage WHERE lease_id = ANY($1::uuid[])",
        [_u(x) for x in lease_ids])


async def cleared_leases(conn, lease_ids: list[bytes]) -> set[bytes]:
    """Which of these leases already have their clearing row."""
    rows = await conn.fetch("SELECT lease_id FROM metering.clearing_leases WHERE lease_id = ANY($1::uuid[])",
                            [_u(x) for x in lease_ids])
    return {r["lease_id"].bytes for r in rows}


async def end_leases(conn, lease_ids: list[bytes], states: list[int], amounts: list[int]) -> None:
    """Leases cleared (4 CLEARED, posted for their records; 6 VOIDED, released
    whole) or 5 REFUSED (the ledger never held it); ``amounts``: what the
    ledger holds (0: keep the recorded amount)."""
    await conn.execute(
        """UPDATE metering.leases l SET state = x.state,
                  amount = CASE WHEN x.amount > 0 THEN x.amount WHEN x.state = 5 THEN 0 ELSE l.amount END,
                  cleared_at = CASE WHEN x.state IN (4, 6) THEN clock_timestamp() END
             FROM unnest($1::uuid[], $2::smallint[], $3::bigint[]) AS x(lease_id, state, amount)
            WHERE l.lease_id = x.lease_id AND l.state IN (1, 2, 3)""",
        [_u(x) for x in lease_ids], states, amounts)


async def store_window(conn, p: WindowPlan, hold_s: int) -> None:
    """The window, its leases' charges, its aggregates (HELD for ``hold_s``
    seconds, or POSTED when 0) and each record's window, aggregate and
    provider share (one narrow row; the record itself is not rewritten) --
    all in the caller's transaction."""
    wid = _u(p.window_id)
    charged = sum(lp.charged for lp in p.leases)
    await conn.execute(
        """INSERT INTO metering.clearing_windows (window_id, jobs, charged_micros, fee_micros, root)
           VALUES ($1, $2, $3, $4, $5)""", wid, p.jobs, charged, p.fee, p.root)
    await conn.execute(
        """INSERT INTO metering.clearing_leases (lease_id, window_id, consumer_account_id, jobs, cost_picos,
                                                 charged_micros, root)
           SELECT l, $1, c, j, p, ch, r
             FROM unnest($2::uuid[], $3::uuid[], $4::bigint[], $5::numeric[], $6::bigint[], $7::bytea[])
               AS x(l, c, j, p, ch, r)""",
        wid, [_u(lp.lease_id) for lp in p.leases], [_u(lp.consumer) for lp in p.leases],
        [lp.jobs for lp in p.leases], [lp.picos for lp in p.leases], [lp.charged for lp in p.leases],
        [lp.root for lp in p.leases])
    if p.aggregates:
        a = p.aggregates
        await conn.execute(
            f"""INSERT INTO metering.clearing_aggregates (aggregate_id, window_id, node_id, provider_account_id,
                      fee_bps, jobs, cost_picos, amount_micros, root, recorded_from, earning, release_at)
                SELECT i, $1, n, pa, f, j, p, am, r, rf,
                       CASE WHEN $11::integer > 0 THEN {_HELD} ELSE {_POSTED} END,
                       CASE WHEN $11::integer > 0 THEN clock_timestamp() + make_interval(secs => $11) END
                  FROM unnest($2::uuid[], $3::text[], $4::uuid[], $5::integer[], $6::bigint[], $7::numeric[],
                              $8::bigint[], $9::bytea[], $10::timestamptz[]) AS x(i, n, pa, f, j, p, am, r, rf)""",
            wid, [_u(x.aggregate_id) for x in a], [x.node_id for x in a], [_u(x.provider) for x in a],
            [x.fee_bps for x in a], [x.jobs for x in a], [x.picos for x in a], [x.amount for x in a],
            [x.root for x in a], [x.recorded_from for x in a], hold_s)
    aggs = {a: _u(a) for a in {a for a, _ in p.per_job.values() if a}}
    await conn.copy_records_to_table(
        "usage_cleared", schema_name="metering", columns=("job_id", "window_id", "aggregate_id", "provider_micros"),
        records=[(_u(j), wid, aggs.get(a), share) for j, (a, share) in p.per_job.items()])


async def stored_windows(conn, limit: int) -> list[bytes]:
    rows = await conn.fetch(
        f"SELECT window_id FROM metering.clearing_windows WHERE state = {STORED} ORDER BY created_at LIMIT $1",
        limit)
    return [r["window_id"].bytes for r in rows]


async def window_parts(conn, wid: bytes) -> tuple:
    """(window, its leases, its aggregates) as stored."""
    w = await conn.fetchrow("SELECT * FROM metering.clearing_windows WHERE window_id = $1", _u(wid))
    leases = await conn.fetch(
        "SELECT lease_id, charged_micros, root FROM metering.clearing_leases WHERE window_id = $1 ORDER BY lease_id",
        _u(wid))
    aggs = await conn.fetch(
        """SELECT aggregate_id, provider_account_id, amount_micros, root, earning
             FROM metering.clearing_aggregates WHERE window_id = $1 ORDER BY aggregate_id""", _u(wid))
    return w, leases, aggs


async def mark_cleared(conn, wid: bytes) -> None:
    await conn.execute(
        f"""UPDATE metering.clearing_windows SET state = {CLEARED}, cleared_at = clock_timestamp()
            WHERE window_id = $1 AND state = {STORED}""", _u(wid))
