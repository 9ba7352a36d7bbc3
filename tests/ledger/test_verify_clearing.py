"""`ledger verify` proves each clearing aggregate against its usage records:
a record whose tokens someone holding the database credential changed, a
record dropped or one added to a cleared lease fails verify, like a changed
transfer; untouched, it passes. A real ledger and metering on Postgres."""

from __future__ import annotations

import os
import uuid

import asyncpg
import pytest

from idlegrid.ledger.audit import verify
from tests.harness.servers import metering_settings
from tests.harness.stack import start_stack
from tests.metering.earnings_support import parties
from tests.metering.test_clearing_support import cleared, open_lease, record, run_lease


@pytest.fixture(scope="module")
async def stack(config, db_url):
    s = await start_stack(config, db_url, parts=("ledger", "metering"),
                          metering_settings=metering_settings(earnings_hold_s=3600))
    yield s
    await s.stop()


async def _problems(conn) -> list[str]:
    return (await verify(conn)).problems


async def test_a_tampered_usage_record_fails_verify(stack):
    p = await parties(stack.ledger)
    lease = await open_lease(stack.metering, p.consumer, 10_000)
    recs = [record(lease, p.consumer, p.provider, "t1", 1_234_567, prompt_tokens=7) for _ in range(5)]
    await run_lease(stack.metering, lease, recs)
    await cleared(stack.db_url, [lease])
    conn = await asyncpg.connect(stack.db_url)
    job = uuid.UUID(bytes=recs[2].job_id)
    try:
        assert await _problems(conn) == []
        # The tokens of one record changed in place (its stored cost left as it was).
        await conn.execute("UPDATE metering.usage SET prompt_tokens = prompt_tokens + 1 WHERE job_id = $1", job)
        problems = await _problems(conn)
        assert any("Merkle root" in x or "root differs" in x for x in problems), problems
        await conn.execute("UPDATE metering.usage SET prompt_tokens = prompt_tokens - 1 WHERE job_id = $1", job)
        assert await _problems(conn) == []
        # A record dropped.
        row = await conn.fetchrow("SELECT * FROM metering.usage WHERE job_id = $1", job)
        await conn.execute("DELETE FROM metering.usage WHERE job_id = $1", job)
        assert await _problems(conn) != []
        cols = list(row.keys())
        await conn.execute(f"INSERT INTO metering.usage ({', '.join(cols)}) VALUES "
                           f"({', '.join(f'${i + 1}' for i in range(len(cols)))})", *row.values())
        assert await _problems(conn) == []
        # A record added to the cleared lease (not in its window).
        extra = dict(row)
        extra.update(job_id=uuid.UUID(bytes=os.urandom(16)))
        await conn.execute(f"INSERT INTO metering.usage ({', '.join(extra)}) VALUES "
                           f"({', '.join(f'${i + 1}' for i in range(len(extra)))})", *extra.values())
        problems = await _problems(conn)
        assert any("added or moved" in x for x in problems), problems
        await conn.execute("DELETE FROM metering.usage WHERE job_id = $1", extra["job_id"])
        assert await _problems(conn) == []
        # A record's provider share changed.
        a = uuid.UUID(bytes=recs[0].job_id)
        await conn.execute("UPDATE metering.usage_cleared SET provider_micros = provider_micros + 1 WHERE job_id = $1",
                           a)
        problems = await _problems(conn)
        assert any("shares" in x for x in problems), problems
        await conn.execute("UPDATE metering.usage_cleared SET provider_micros = provider_micros - 1 WHERE job_id = $1",
                           a)
        assert await _problems(conn) == []
        # A cleared record's row gone while its clearing stays.
        saved = await conn.fetchrow("SELECT * FROM metering.usage WHERE job_id = $1", job)
        await conn.execute("DELETE FROM metering.usage WHERE job_id = $1", job)
        problems = await _problems(conn)
        assert any("the record is missing" in x for x in problems), problems
        await conn.execute(f"INSERT INTO metering.usage ({', '.join(saved.keys())}) VALUES "
                           f"({', '.join(f'${i + 1}' for i in range(len(saved)))})", *saved.values())
        assert await _problems(conn) == []
    finally:
        await conn.close()
