"""Tamper evidence: the database refuses UPDATE / DELETE / TRUNCATE of
transfers and batches; a superuser who gets around that (triggers off) and
rewrites history is caught by ``verify``, which names what is wrong. Each test
restores the row it changed, and verify passes again (so the tests stay
independent on the module's database)."""

from __future__ import annotations

import contextlib
import uuid

import asyncpg
import pytest

from tests.ledger.support import (
    DMNEC,
    PENDING,
    account,
    create,
    create_accounts,
    post,
    run_verify,
    transfer,
)


@pytest.fixture(scope="module")
async def booked(ledger, db_url):
    """A few batches of transfers (plain, pending, post) and a burned id; verify passes."""
    a, b, c, flagged = account(), account(), account(), account(flags=DMNEC)
    await create_accounts(ledger, a, b, c, flagged)
    assert await create(ledger, transfer(flagged.id, a.id, 1)) == ["EXCEEDS_CREDITS"]
    for i in range(3):
        assert await create(ledger, transfer(a.id, b.id, 100 + i), transfer(b.id, c.id, 10 + i)) == ["OK", "OK"]
    p = transfer(c.id, a.id, 5, flags=PENDING)
    assert await create(ledger, p) == ["OK"]
    assert await create(ledger, post(p.id, 3)) == ["OK"]
    rep = await run_verify(db_url)
    assert rep.ok, rep.problems
    return a, b, c


@contextlib.asynccontextmanager
async def superuser(db_url: str):
    """A connection that bypasses the append-only triggers (and FK checks), as
    a superuser could: session_replication_role = replica."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("SET session_replication_role = replica")
        yield conn
    finally:
        await conn.close()


async def _problems(db_url: str) -> list[str]:
    rep = await run_verify(db_url)
    return rep.problems


async def _after_restore_ok(db_url: str) -> None:
    rep = await run_verify(db_url)
    assert rep.ok, rep.problems


@pytest.mark.parametrize("statement", [
    "UPDATE ledger.transfers SET amount = amount + 1 WHERE seq = 1",
    "UPDATE ledger.transfers SET code = 9 WHERE seq = 2",
    "DELETE FROM ledger.transfers WHERE seq = (SELECT max(seq) FROM ledger.transfers)",
    "TRUNCATE ledger.transfers CASCADE",
    "UPDATE ledger.batches SET hash = prev_hash WHERE batch = 1",
    "DELETE FROM ledger.batches WHERE batch = (SELECT max(batch) FROM ledger.batches)",
    "TRUNCATE ledger.batches CASCADE",
    "UPDATE ledger.failed_transfers SET result = 0",
    "DELETE FROM ledger.failed_transfers",
    "DELETE FROM ledger.accounts WHERE id = (SELECT debit_account_id FROM ledger.transfers WHERE seq = 1)",
    "UPDATE ledger.accounts SET flags = 1 WHERE id = (SELECT debit_account_id FROM ledger.transfers WHERE seq = 1)",
    "UPDATE ledger.totals SET debits_posted = debits_posted + 1",
])
async def test_plain_rewrites_of_history_are_refused_by_the_database(db_url, booked, statement):
    """Without disabling triggers, even the database owner cannot update,
    delete or truncate transfers and batches, delete accounts or change
    anything but their balances, or unbalance the totals."""
    conn = await asyncpg.connect(db_url)
    try:
        with pytest.raises(asyncpg.PostgresError) as e:
            await conn.execute(statement)
        assert e.value.sqlstate in ("23000", "23514"), e.value  # integrity / check violation
    finally:
        await conn.close()
    await _after_restore_ok(db_url)


async def test_changed_amount_is_a_hash_mismatch(db_url, booked):
    """Changing a stored transfer's amount breaks its batch's hash and the
    recomputed balances; verify reports both, naming the batch."""
    async with superuser(db_url) as su:
        seq, batch = await su.fetchrow("SELECT seq, batch FROM ledger.transfers ORDER BY seq LIMIT 1 OFFSET 2")
        await su.execute("UPDATE ledger.transfers SET amount = amount + 1000 WHERE seq = $1", seq)
        try:
            problems = await _problems(db_url)
        finally:
            await su.execute("UPDATE ledger.transfers SET amount = amount - 1000 WHERE seq = $1", seq)
    assert any(p.startswith(f"batch {batch} ") and "hash mismatch" in p for p in problems), problems
    assert any("stored balance" in p for p in problems), problems
    await _after_restore_ok(db_url)


@pytest.mark.parametrize("column, value", [
    ("credit_account_id", "debit_account_id"),  # same account both sides: refused by a CHECK, so swap instead
    ("code", "code + 1"),
    ("user_data", "gen_random_uuid()"),
    ("ledger", "ledger + 1"),
    ("flags", "flags | 1"),
    ("timeout_s", "timeout_s + 1"),
])
async def test_any_changed_field_is_a_hash_mismatch(db_url, booked, column, value):
    """Every field covered by the hash: changing it (even ones that move no
    money, like code, user_data or flags) makes verify report a hash mismatch."""
    async with superuser(db_url) as su:
        row = await su.fetchrow("SELECT * FROM ledger.transfers ORDER BY seq LIMIT 1 OFFSET 1")
        if column == "credit_account_id":
            sql = ("UPDATE ledger.transfers SET debit_account_id = credit_account_id, "
                   "credit_account_id = debit_account_id WHERE seq = $1")
        else:
            sql = f"UPDATE ledger.transfers SET {column} = {value} WHERE seq = $1"
        await su.execute(sql, row["seq"])
        try:
            problems = await _problems(db_url)
        finally:
            await su.execute(
                "UPDATE ledger.transfers SET debit_account_id = $2, credit_account_id = $3, code = $4, "
                "user_data = $5, ledger = $6, flags = $7, timeout_s = $8 WHERE seq = $1",
                row["seq"], row["debit_account_id"], row["credit_account_id"], row["code"], row["user_data"],
                row["ledger"], row["flags"], row["timeout_s"])
    assert any(f"batch {row['batch']} " in p and "hash mismatch" in p for p in problems), problems
    await _after_restore_ok(db_url)


async def test_deleted_transfer_is_detected(db_url, booked):
    """Deleting a transfer leaves a gap in seq and breaks its batch's hash."""
    async with superuser(db_url) as su:
        row = await su.fetchrow("SELECT * FROM ledger.transfers ORDER BY seq LIMIT 1 OFFSET 1")
        await su.execute("DELETE FROM ledger.transfers WHERE seq = $1", row["seq"])
        try:
            problems = await _problems(db_url)
        finally:
            cols = list(row.keys())
            await su.execute(
                f"INSERT INTO ledger.transfers ({', '.join(cols)}) VALUES "
                f"({', '.join(f'${i + 1}' for i in range(len(cols)))})", *row.values())
    assert any("missing" in p for p in problems), problems
    assert any("hash mismatch" in p for p in problems), problems
    await _after_restore_ok(db_url)


async def test_forged_balance_is_detected(db_url, booked):
    """Account balances may change through UPDATE (the writer does that), so
    a forged balance gets past the triggers; verify recomputes every balance
    from the transfers and reports the account and the per-ledger totals."""
    a, _, _ = booked
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("UPDATE ledger.accounts SET credits_posted = credits_posted + 500 WHERE id = $1",
                           uuid.UUID(bytes=a.id))
        try:
            problems = await _problems(db_url)
        finally:
            await conn.execute("UPDATE ledger.accounts SET credits_posted = credits_posted - 500 WHERE id = $1",
                               uuid.UUID(bytes=a.id))
    finally:
        await conn.close()
    assert any("stored balances" in p for p in problems), problems
    assert any("debits" in p and "credits" in p and p.startswith("ledger 1") for p in problems), problems
    await _after_restore_ok(db_url)


async def test_rewritten_batch_hash_breaks_the_link_to_the_next_batch(db_url, booked):
    """Replacing a batch's hash (to cover up a change) no longer links to the
    next batch's prev_hash, and no longer matches its transfers."""
    async with superuser(db_url) as su:
        batch, old = await su.fetchrow("SELECT batch, hash FROM ledger.batches ORDER BY batch LIMIT 1 OFFSET 1")
        await su.execute("UPDATE ledger.batches SET hash = $2 WHERE batch = $1", batch, b"\x01" * 32)
        try:
            problems = await _problems(db_url)
        finally:
            await su.execute("UPDATE ledger.batches SET hash = $2 WHERE batch = $1", batch, old)
    assert any(f"batch {batch} " in p and "hash mismatch" in p for p in problems), problems
    assert any(f"batch {batch + 1}: prev_hash" in p for p in problems), problems
    await _after_restore_ok(db_url)


async def test_forged_history_row_is_detected(db_url, booked):
    """Changing only the stored balance history of a transfer (not hashed) is
    caught by replaying the balances."""
    async with superuser(db_url) as su:
        seq = await su.fetchval("SELECT max(seq) FROM ledger.transfers")
        await su.execute("UPDATE ledger.transfers SET cr_credits_posted = cr_credits_posted + 1 WHERE seq = $1", seq)
        try:
            problems = await _problems(db_url)
        finally:
            await su.execute("UPDATE ledger.transfers SET cr_credits_posted = cr_credits_posted - 1 WHERE seq = $1",
                             seq)
    assert problems == [f"seq {seq}: stored balance history differs from the recomputed balances"], problems
    await _after_restore_ok(db_url)


async def test_verify_cli_exits_non_zero_with_a_report_on_tampering(db_url, booked, tmp_path):
    """``idlegrid ledger verify`` exits 0 on intact books and 1 with a precise
    report when a transfer was changed behind the service's back."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "IDLEGRID_DATABASE_URL": db_url, "IDLEGRID_HOME": str(tmp_path),
           "IDLEGRID_LOG_FORMAT": "console"}

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "idlegrid.cli.main", "ledger", "verify"], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    ok = run()
    assert ok.returncode == 0 and "ledger verify: OK" in ok.stdout, ok.stdout + ok.stderr
    async with superuser(db_url) as su:
        await su.execute("UPDATE ledger.transfers SET amount = amount + 1 WHERE seq = 1")
        try:
            bad = run()
        finally:
            await su.execute("UPDATE ledger.transfers SET amount = amount - 1 WHERE seq = 1")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAILED" in bad.stdout and "hash mismatch" in bad.stdout


async def test_service_still_works_after_the_tampering_tests(ledger, db_url, booked):
    """Restored books keep verifying and accept new transfers."""
    a, b, _ = booked
    assert await create(ledger, transfer(a.id, b.id, 1)) == ["OK"]
    await _after_restore_ok(db_url)
