"""SIGKILL at each point of the job path, while partners' load runs, for each
of the scheduler, metering and the ledger (issue 12). The killed process is
restarted on its port; once every credit lease is cleared (a killed
scheduler's leases only after use_until + its max job time + metering's
slack, so the scheduler runs with a short max job time), the test's jobs are
recounted against metering and the ledger (tests/money/recount.py says
exactly what is asserted), the books are exact (check_books) and ``idlegrid
ledger verify`` passes.

The moments:
- ``before``: as soon as a lease opened after the test armed the kill
  appears in metering (its OpenLease done or in flight, its jobs not yet
  answered);
- ``during``: at a streamed answer's first text chunk;
- ``after``: the instant a unary answer reached its client (its record is
  durable, its lease not yet closed or cleared);
- ``clearing`` (the ledger): while a clearing window is stored in metering
  but not yet applied by the ledger.

The kills run first, one case after another on the module's fleet, each
with its own consumers and load (``kill_phases``); then every test waits
until every lease is cleared and recounts its own case. A crash's leases take
metering's delays to clear (the fleet's 3 s of slack after a killed
scheduler's max job time; 15 s for a lease left OPENING by a metering or
ledger crash), so those waits overlap instead of adding up, and a case's
kill happens while earlier cases' leases are still being cleared.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import pytest

from tests.harness import eventually
from tests.harness.books import leases_cleared
from tests.money.fleet import Load, start_fleet
from tests.money.recount import recount

pytestmark = pytest.mark.slow

CREDITS = 50_000_000  # per consumer: far more than the test spends
CLEARED_WAIT_S = 300.0  # a bound: expired leases clear after use_until + max job time + slack, opening ones after 15 s
WARM_ANSWERS = 6
AFTER_RESTART_ANSWERS = 6


@pytest.fixture(scope="module")
async def fleet(config, db_url, tmp_path_factory):
    f = await start_fleet(config, db_url, tmp_path_factory.mktemp("money"))
    yield f
    await f.stop()


async def _new_lease(db_url: str):
    """Returns a check that is true once a lease created from now is in metering."""
    conn = await asyncpg.connect(db_url)
    armed = await conn.fetchval("SELECT clock_timestamp()")

    async def seen() -> bool:
        return bool(await conn.fetchval("SELECT count(*) FROM metering.leases WHERE created_at > $1", armed))

    return conn, seen


async def _stored_window(db_url: str):
    conn = await asyncpg.connect(db_url)

    async def seen() -> bool:  # 1 STORED: in the ledger's hands, or about to be
        return bool(await conn.fetchval("SELECT count(*) FROM metering.clearing_windows WHERE state = 1"))

    return conn, seen


async def _kill_at(fleet, load: Load, kind: str, moment: str) -> None:
    """Arms the kill of ``kind`` at ``moment`` and returns once it happened."""
    child = fleet.children[kind]
    killed = asyncio.Event()

    def kill_now(_job=None) -> None:
        if not killed.is_set():
            killed.set()
            child.kill()

    if moment == "after":
        load.on_answer = kill_now
    elif moment == "during":
        load.on_text = kill_now
    else:
        conn, seen = await (_new_lease if moment == "before" else _stored_window)(fleet.db_url)
        try:
            await eventually(seen, what=f"the moment {moment!r}", timeout_s=120, every_s=0.002)
        finally:
            await conn.close()
        kill_now()
    await asyncio.wait_for(killed.wait(), 180)
    load.on_answer = load.on_text = None


async def _kill_case(fleet, kind: str, moment: str) -> Load:
    """One case up to its recount: new consumers' load, the kill at
    ``moment``, the restart, more answers; returns the finished load."""
    consumers = [await fleet.stack.consumer(CREDITS) for _ in range(2)]
    load = Load(fleet.children["scheduler"].addr, consumers)
    load.start()
    try:
        await load.answers(WARM_ANSWERS, what="answers before the kill")
        kills = fleet.children[kind].kills
        await _kill_at(fleet, load, kind, moment)
        assert fleet.children[kind].kills == kills + 1
        await fleet.children[kind].start()  # the load keeps running through the outage
        await load.answers(AFTER_RESTART_ANSWERS, what=f"answers after {kind} restarted")
    finally:
        await load.finish()
    return load


# Run in this order: the kills whose leases take longest to clear (a lease
# left OPENING: 15 s) first, so the recounts wait least after the last kill.
CASES = [("ledger", m) for m in ("before", "during", "after", "clearing")]
CASES += [("metering", "before")] + [("scheduler", m) for m in ("before", "during", "after")]
CASES += [("metering", m) for m in ("during", "after")]


@dataclass
class Killed:
    """A case's kill phase: its finished load, or the error it failed with."""

    load: Load | None = None
    error: Exception | None = None


@pytest.fixture(scope="module")
async def kill_phases(fleet, request) -> dict[tuple[str, str], Killed]:
    """The kill phase of every case selected in this module, in CASES order."""
    selected = {(item.callspec.params["kind"], item.callspec.params["moment"])
                for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    done: dict[tuple[str, str], Killed] = {}
    for kind, moment in (c for c in CASES if c in selected):
        try:
            done[(kind, moment)] = Killed(load=await _kill_case(fleet, kind, moment))
        except Exception as e:  # noqa: BLE001 -- raised again by its own test
            done[(kind, moment)] = Killed(error=e)
            for child in fleet.children.values():  # the next case starts on a whole fleet
                if child.proc is None or child.proc.poll() is not None:
                    await child.start()
    return done


@pytest.mark.parametrize(("kind", "moment"), CASES, ids=[f"{k}-{m}" for k, m in CASES])
async def test_sigkill_bills_every_answered_job_once(fleet, kill_phases, kind, moment):
    killed = kill_phases[(kind, moment)]
    if killed.error is not None:
        raise killed.error
    load = killed.load
    await leases_cleared(fleet.db_url, timeout_s=CLEARED_WAIT_S)  # every case's, so the books are final
    got = await recount(fleet.db_url, load.sent, load.answered)
    assert got.answered >= WARM_ANSWERS + AFTER_RESTART_ANSWERS, (got, load.outcomes)
    print(kind, moment, got, dict(load.outcomes))  # shown with -s
    await fleet.stack.check_books()
    rc, out = await fleet.verify_cli()
    assert rc == 0, out
