"""Recounting a test's jobs against metering and the ledger once every lease
is cleared.

What is asserted (the design bills what is durable):
- every answered job (its client got the whole answer) has exactly one usage
  record, on a lease, in exactly one clearing window;
- every record is of a job the test sent; a job with no record is billed
  nothing: each lease is charged exactly ceil(Σ its records' exact costs /
  10^6) micro-credits, by exactly one post of its ledger hold (none, or a
  void, for a lease without records), so the only unanswered jobs billed are
  those whose record was durable (the scheduler wrote it, then its answer was
  lost to the crash) -- they are billed exactly once like any other;
- no record of a leased job is also settled on its own (no ledger transfer
  names the job);
- per consumer: debits posted = Σ its leases' charges, nothing pending.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from idlegrid.ledger.v1 import ledger_pb2 as lpb

POST, VOID = lpb.TRANSFER_FLAG_POST_PENDING_TRANSFER, lpb.TRANSFER_FLAG_VOID_PENDING_TRANSFER
PICOS_PER_MICRO = 10**6


@dataclass
class Recount:
    answered: int
    recorded: int
    recorded_unanswered: int  # durable, answer lost to the crash: billed like any other
    unrecorded: int  # sent, never durable: billed nothing
    leases: int


async def recount(db_url: str, sent: dict[bytes, bytes], answered: set[bytes]) -> Recount:
    conn = await asyncpg.connect(db_url)
    try:
        return await _recount(conn, sent, answered)
    finally:
        await conn.close()


async def _recount(conn, sent: dict[bytes, bytes], answered: set[bytes]) -> Recount:
    consumers = sorted({uuid.UUID(bytes=c) for c in sent.values()})
    rows = await conn.fetch(
        "SELECT job_id, consumer_account_id, lease_id, window_id, cost_picos FROM metering.usage_lines"
        " WHERE consumer_account_id = ANY($1::uuid[])", consumers)
    recorded = {r["job_id"].bytes: r for r in rows}
    assert len(recorded) == len(rows)
    strangers = set(recorded) - set(sent)
    assert not strangers, f"{len(strangers)} usage records of jobs never sent"
    lost = answered - set(recorded)
    assert not lost, f"{len(lost)} of {len(answered)} answered jobs have no usage record"
    for job, r in recorded.items():
        assert r["lease_id"] is not None and r["window_id"] is not None, (job.hex(), dict(r))
        assert r["consumer_account_id"].bytes == sent[job]
    per_job = await conn.fetchval("SELECT count(*) FROM ledger.transfers WHERE user_data = ANY($1::uuid[])",
                                  [uuid.UUID(bytes=j) for j in recorded])
    assert per_job == 0, f"{per_job} ledger transfers settle a leased job on its own"

    leases = await conn.fetch(
        "SELECT l.lease_id, l.consumer_account_id, l.state, c.charged_micros FROM metering.leases l"
        " LEFT JOIN metering.clearing_leases c USING (lease_id) WHERE l.consumer_account_id = ANY($1::uuid[])",
        consumers)
    picos: dict[uuid.UUID, int] = {}
    for r in rows:
        picos[r["lease_id"]] = picos.get(r["lease_id"], 0) + int(r["cost_picos"])
    unknown = set(picos) - {x["lease_id"] for x in leases}
    assert not unknown, f"records on {len(unknown)} leases metering has no row for"
    resolutions = {r["pending_id"]: r for r in await conn.fetch(
        "SELECT pending_id, flags, amount FROM ledger.transfers WHERE pending_id = ANY($1::uuid[])",
        [x["lease_id"] for x in leases])}
    charged_by: dict[uuid.UUID, int] = {}
    for lease in leases:
        lid = lease["lease_id"]
        want = -(-picos.get(lid, 0) // PICOS_PER_MICRO)
        res = resolutions.get(lid)
        got = int(res["amount"]) if res is not None and res["flags"] & POST else 0
        assert got == want, f"lease {lid} charged {got}, its records sum to {want} (state {lease['state']})"
        if lease["charged_micros"] is not None:
            assert lease["charged_micros"] == want, (lid, lease["charged_micros"], want)
        else:
            assert want == 0, f"lease {lid} has records but no clearing row"
        key = lease["consumer_account_id"]
        charged_by[key] = charged_by.get(key, 0) + got
    for c in consumers:
        posted, pending = await conn.fetchrow(
            "SELECT debits_posted, debits_pending FROM ledger.accounts WHERE id = $1", c)
        assert pending == 0, f"consumer {c} still has {pending} micro-credits held"
        assert posted == charged_by.get(c, 0), (c, posted, charged_by.get(c, 0))
    return Recount(answered=len(answered), recorded=len(recorded),
                   recorded_unanswered=len(set(recorded) - answered),
                   unrecorded=len(set(sent) - set(recorded)), leases=len(leases))
