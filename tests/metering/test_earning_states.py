"""The earning state machine (a settled job's provider share): HELD ends once,
RELEASED or VOIDED; POSTED, RELEASED and VOIDED never move; the database
refuses a row that breaks the rules even when the code is bypassed; and the
registry's SUSPENDED nodes are the ones whose earnings are voided."""

from __future__ import annotations

import os
import uuid

import asyncpg
import pytest

from idlegrid.common import db
from idlegrid.common.errors import ConfigError
from idlegrid.metering import earning_states, service
from idlegrid.metering.earning_states import Earning
from idlegrid.metering.settings import MeteringSettings
from idlegrid.metering.suspensions import suspended_nodes
from idlegrid.metering.v1 import metering_pb2 as pb
from idlegrid.registry.v1 import registry_pb2 as rpb


def test_the_states_are_the_protos():
    assert {s.name: int(s) for s in Earning if s} == {
        n.removeprefix("EARNING_STATE_"): v for n, v in pb.EarningState.items() if v}


@pytest.mark.parametrize("src, dst", [
    (Earning.NONE, Earning.HELD), (Earning.NONE, Earning.POSTED), (Earning.HELD, Earning.RELEASED),
    (Earning.HELD, Earning.VOIDED)])
def test_allowed_moves(src, dst):
    earning_states.check(src, dst)


@pytest.mark.parametrize("src", sorted(earning_states.FINAL))
def test_a_final_earning_never_changes(src):
    for dst in Earning:
        with pytest.raises(earning_states.IllegalTransition):
            earning_states.check(src, dst)


def test_a_held_earning_cannot_go_back_or_be_posted_at_settlement():
    for dst in (Earning.NONE, Earning.HELD, Earning.POSTED):
        with pytest.raises(earning_states.IllegalTransition):
            earning_states.check(Earning.HELD, dst)


def test_settlement_holds_a_share_only_under_a_window():
    assert earning_states.at_settlement(900, 86_400) == Earning.HELD
    assert earning_states.at_settlement(900, 0) == Earning.POSTED
    assert earning_states.at_settlement(0, 86_400) == Earning.NONE


def test_the_release_window_is_24_hours_by_default_and_read_from_the_environment():
    assert MeteringSettings().earnings_hold_s == 86_400
    assert MeteringSettings.from_env({}).earnings_hold_s == 86_400
    assert MeteringSettings.from_env({"IDLEGRID_EARNINGS_HOLD_S": "5"}).earnings_hold_s == 5
    for bad in ("-1", "x", str(32 * 86_400)):
        with pytest.raises(ConfigError, match="IDLEGRID_EARNINGS_HOLD_S"):
            MeteringSettings.from_env({"IDLEGRID_EARNINGS_HOLD_S": bad})


def test_only_suspended_nodes_are_taken_with_their_reason():
    nodes = [
        rpb.Node(node_id=b"\x01" * 16, state=rpb.NODE_STATE_SUSPENDED, state_reason=rpb.STATE_REASON_CHECK_FAILED,
                 state_detail="job 42: wrong model"),
        rpb.Node(node_id=b"\x02" * 16, state=rpb.NODE_STATE_SUSPENDED, state_reason=rpb.STATE_REASON_SUSPENDED),
        *(rpb.Node(node_id=bytes([3 + i]) * 16, state=s) for i, s in enumerate(
            (rpb.NODE_STATE_READY, rpb.NODE_STATE_OFFLINE, rpb.NODE_STATE_PAUSED, rpb.NODE_STATE_VERIFYING))),
    ]
    assert suspended_nodes(nodes) == {"01" * 16: "spot check failed: job 42: wrong model",
                                      "02" * 16: "suspended by an operator"}


@pytest.fixture(scope="module")
async def pool(db_url):
    p = await db.create_pool(db_url, max_size=2)
    await db.migrate(p, "metering", service.MIGRATIONS)
    yield p
    await p.close()


async def _insert(pool, *, earning: int, provider: int = 9, release: bool = False, resolved: bool = False,
                  checked: int = 0, checked_at: bool = False) -> None:
    await pool.execute(
        """INSERT INTO metering.usage (job_id, consumer_account_id, provider_account_id, model, prompt_tokens,
               completion_tokens, node_prompt_tokens, node_completion_tokens, requests, duration_ms,
               price_input_per_mtok, price_output_per_mtok, price_per_request, cost_micros, fee_bps, outcome,
               started_at, finished_at, settlement, fee_micros, provider_micros, settled_at, earning,
               earning_release_at, earning_resolved_at, check_result, checked_at)
           VALUES ($1, $2, $3, 'm', 0, 0, 0, 0, 1, 0, 0, 0, 10, 10, 1000, 1, now(), now(), 2, 10 - $4, $4,
                   now(), $5, CASE WHEN $6 THEN now() END, CASE WHEN $7 THEN now() END, $8,
                   CASE WHEN $9 THEN now() END)""",
        uuid.UUID(bytes=os.urandom(16)), uuid.UUID(bytes=os.urandom(16)), uuid.UUID(bytes=os.urandom(16)),
        provider, earning, release, resolved, checked, checked_at)


async def test_the_database_accepts_the_rows_the_machine_allows(pool):
    await _insert(pool, earning=Earning.POSTED)
    await _insert(pool, earning=Earning.HELD, release=True)
    await _insert(pool, earning=Earning.RELEASED, release=True, resolved=True)
    await _insert(pool, earning=Earning.VOIDED, release=True, resolved=True, checked=2, checked_at=True)
    await _insert(pool, earning=Earning.NONE, provider=0)


@pytest.mark.parametrize("row", [
    dict(earning=Earning.NONE),  # a provider share without an earning state
    dict(earning=Earning.HELD, provider=0, release=True),  # held, but nothing for the provider
    dict(earning=Earning.HELD),  # held without a release time
    dict(earning=Earning.HELD, release=True, resolved=True),  # held, yet resolved
    dict(earning=Earning.RELEASED, release=True),  # released without a time
    dict(earning=Earning.POSTED, release=True),  # posted at settlement has no window
    dict(earning=7, release=True),  # no such state
    dict(earning=Earning.POSTED, checked=1),  # a verdict without its time
])
async def test_the_database_refuses_rows_that_break_the_machine(pool, row):
    with pytest.raises(asyncpg.CheckViolationError):
        await _insert(pool, **row)
