"""The hash chain anchored outside the database: a real ledger signs
checkpoints of its chain head (Ed25519, a key pair kept in its home on one
machine) into an append-only log, and ``verify`` checks the recomputed chain
against them. A rewrite by someone holding only the database credential,
with the chain recomputed by the project's own code, passes the row checks
but not the checkpoints; so do a removed chain tail and a lost log tail."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from idlegrid.ledger.checkpoint_log import parse
from tests.harness.polling import eventually
from tests.ledger.anchoring import (
    attacker,
    recompute_chain,
    run_verify,
    shrink_transfer,
    start_anchored,
)
from tests.ledger.support import account, create, create_accounts, transfer


@pytest.fixture
async def anchored(pg_admin_url, tmp_path, monkeypatch):
    """A ledger that checkpoints every 50 ms (set through the environment, as
    an operator would), with a transfer x -> y of 100 in its own batch and
    later batches that touch neither account."""
    monkeypatch.setenv("IDLEGRID_LEDGER_CHECKPOINT_EVERY_S", "0.05")
    a = await start_anchored(pg_admin_url, tmp_path / "home")
    x, y, p, q = account(), account(), account(), account()
    await create_accounts(a.stack.ledger, x, y, p, q)
    first = transfer(x.id, y.id, 100)
    assert await create(a.stack.ledger, first) == ["OK"]
    for i in range(3):
        assert await create(a.stack.ledger, transfer(p.id, q.id, 10 + i)) == ["OK"]
    a.first_transfer = first.id
    try:
        yield a
    finally:
        await a.stack.stop()


async def _head(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchval("SELECT batch FROM ledger.chain_head")
    finally:
        await conn.close()


async def test_normal_run_writes_and_verifies_the_checkpoint_log(anchored, tmp_path):
    """The periodic task checkpoints the moving head; the key pair is created
    in the home (private key 0600); every log line is signed; verify with the
    log passes; the database keeps a copy; the CLI reports the checkpoints."""
    a = anchored
    head = await _head(a.db_url)
    await eventually(lambda: a.checkpointer.last is not None and a.checkpointer.last.batch == head,
                     what="a checkpoint of the chain head")
    assert stat.S_IMODE(os.stat(a.home / "ledger-checkpoint.key").st_mode) == 0o600
    assert (a.home / "ledger-checkpoint.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    await a.stack.stop()  # the final checkpoint
    lines = a.log.read_bytes().splitlines()
    cps = [parse(line) for line in lines]
    assert [cp.n for cp in cps] == list(range(1, len(cps) + 1))
    assert cps[-1].batch == head
    rep = await run_verify(a.db_url, a.settings())
    assert rep.ok, rep.problems
    assert rep.checkpoints == len(cps)
    conn = await asyncpg.connect(a.db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ledger.checkpoints") == len(cps)
    finally:
        await conn.close()
    env = {**os.environ, "IDLEGRID_DATABASE_URL": a.db_url, "IDLEGRID_HOME": str(a.home),
           "IDLEGRID_LOG_FORMAT": "console"}

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "idlegrid.cli.main", "ledger", "verify"], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    out = await asyncio.to_thread(run)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(cps)} signed checkpoints" in out.stdout, out.stdout


async def test_rewritten_history_with_a_recomputed_chain_fails_only_with_checkpoints(anchored):
    """The hole being closed: an attacker with the database credential lowers
    a signed transfer from 100 to 1, fixes every balance and total, and
    recomputes the chain with ledger.chain. verify without checkpoints
    passes; with them it names the checkpoint the chain no longer passes
    through. The running checkpointer also refuses to sign on top of it."""
    a = anchored
    cp = await a.checkpointer.checkpoint()
    assert cp is not None and cp.batch == await _head(a.db_url)
    async with attacker(a.db_url) as conn:
        await shrink_transfer(conn, a.first_transfer, 1)
        await recompute_chain(conn)
    without = await run_verify(a.db_url)
    assert without.ok, without.problems  # what anyone with the credential could get away with before
    rep = await run_verify(a.db_url, a.settings())
    assert any(f"checkpoint {cp.n} (batch {cp.batch}," in p and "does not pass through" in p
               and "rewritten" in p for p in rep.problems), rep.problems
    p, q = account(), account()
    await create_accounts(a.stack.ledger, p, q)
    assert await create(a.stack.ledger, transfer(p.id, q.id, 1)) == ["OK"]
    assert await a.checkpointer.checkpoint() is None
    assert a.checkpointer.halted


async def test_removed_chain_tail_is_caught(anchored):
    """Deleting the newest signed batches (and rolling the head back) leaves a
    consistent shorter chain that verify alone accepts; a checkpoint beyond
    its end says signed history was removed."""
    a = anchored
    cp = await a.checkpointer.checkpoint()
    assert cp is not None
    await a.stack.stop()
    async with attacker(a.db_url) as conn:
        last = await conn.fetchrow("SELECT * FROM ledger.batches ORDER BY batch DESC LIMIT 1")
        moved = await conn.fetch("SELECT * FROM ledger.transfers WHERE batch = $1", last["batch"])
        for t in moved:  # undo the balances it moved (plain posted transfers)
            await shrink_transfer(conn, t["id"].bytes, 0)
        await conn.execute("DELETE FROM ledger.transfers WHERE batch = $1", last["batch"])
        await conn.execute("DELETE FROM ledger.batches WHERE batch = $1", last["batch"])
        await recompute_chain(conn)
    without = await run_verify(a.db_url)
    assert without.ok, without.problems
    rep = await run_verify(a.db_url, a.settings())
    assert any(f"checkpoint {cp.n} " in p and "signed history was removed" in p for p in rep.problems), rep.problems


async def test_lost_log_tail_is_reported_once_older_than_the_lag(anchored):
    """Cutting the newest checkpoints off the log leaves batches no
    checkpoint covers: within lag_max_s of their commit that is normal (the
    next checkpoint is due); later, verify reports the uncovered tail."""
    a = anchored
    first = await a.checkpointer.checkpoint()
    p, q = account(), account()
    await create_accounts(a.stack.ledger, p, q)
    assert await create(a.stack.ledger, transfer(p.id, q.id, 5)) == ["OK"]
    second = await a.checkpointer.checkpoint()
    assert first is not None and second is not None and second.batch > first.batch
    await a.stack.stop()
    lines = a.log.read_bytes().splitlines(keepends=True)
    keep = [line for line in lines if parse(line).batch <= first.batch]
    a.log.write_bytes(b"".join(keep))
    fresh = await run_verify(a.db_url, a.settings())
    assert fresh.ok, fresh.problems
    later = await run_verify(a.db_url, a.settings(), now=datetime.now(UTC) + timedelta(seconds=61))
    assert any(f"batches {first.batch + 1}..{second.batch}" in p and "covered by no checkpoint" in p
               for p in later.problems), later.problems


async def test_removed_middle_line_and_forged_lines_are_named(anchored, tmp_path):
    """A checkpoint removed from the middle of the log is a gap in n; a line
    altered after signing, a line signed by another key, and a line that is
    not a checkpoint are each reported with their line number."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from idlegrid.ledger.checkpoint_keys import key_id

    a = anchored
    cps = []
    for _ in range(3):
        p, q = account(), account()
        await create_accounts(a.stack.ledger, p, q)
        assert await create(a.stack.ledger, transfer(p.id, q.id, 1)) == ["OK"]
        cps.append(await a.checkpointer.checkpoint())
    await a.stack.stop()
    lines = a.log.read_bytes().splitlines(keepends=True)
    n2 = next(i for i, line in enumerate(lines) if parse(line).n == cps[1].n)
    del lines[n2]
    real = parse(lines[-1])
    altered = type(real)(real.n + 1, real.batch, real.last_seq, bytes(32), real.at, real.key, real.sig)
    own = Ed25519PrivateKey.generate()
    forged = type(real)(real.n + 2, real.batch, real.last_seq, real.hash, real.at,
                        key_id(own.public_key())).signed(own)
    lines += [altered.line(), forged.line(), b'{"v": 1, "n": "x"}\n']
    a.log.write_bytes(b"".join(lines))
    rep = await run_verify(a.db_url, a.settings())
    problems = "\n".join(rep.problems)
    assert f"checkpoints {cps[1].n}..{cps[1].n} are missing from the log" in problems, problems
    assert f"line {len(lines) - 2} (checkpoint {altered.n}): bad signature" in problems, problems
    assert f"line {len(lines) - 1} (checkpoint {forged.n}): signed by key {forged.key}" in problems, problems
    assert f"line {len(lines)}: not a checkpoint" in problems, problems
