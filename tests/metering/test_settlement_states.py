"""The settlement state machine: PENDING moves once to a final state, a final
state never moves, and the database refuses a row that breaks the rules even
when the code is bypassed."""

from __future__ import annotations

import os
import uuid

import asyncpg
import pytest

from idlegrid.common import db
from idlegrid.metering import service, states
from idlegrid.metering.states import Settlement
from idlegrid.metering.v1 import metering_pb2 as pb


def test_the_states_are_the_protos():
    assert {s.name: int(s) for s in Settlement} == {
        n.removeprefix("SETTLEMENT_STATE_"): v for n, v in pb.SettlementState.items() if v}


@pytest.mark.parametrize("dst, cost", [
    (Settlement.PENDING, 5), (Settlement.SETTLED, 5), (Settlement.RELEASED, 0), (Settlement.EXPIRED, 5),
    (Settlement.REJECTED, 5), (Settlement.REJECTED, 0)])
def test_pending_may_move_to_any_state(dst, cost):
    states.check(Settlement.PENDING, dst, cost_micros=cost)


@pytest.mark.parametrize("src", sorted(states.FINAL))
def test_a_final_state_never_changes(src):
    for dst in Settlement:
        with pytest.raises(states.IllegalTransition):
            states.check(src, dst, cost_micros=5)


def test_only_a_cost_is_settled_and_only_no_cost_is_released():
    with pytest.raises(states.IllegalTransition):
        states.check(Settlement.PENDING, Settlement.SETTLED, cost_micros=0)
    with pytest.raises(states.IllegalTransition):
        states.check(Settlement.PENDING, Settlement.RELEASED, cost_micros=1)


@pytest.fixture(scope="module")
async def pool(db_url):
    p = await db.create_pool(db_url, max_size=2)
    await db.migrate(p, "metering", service.MIGRATIONS)
    yield p
    await p.close()


async def _insert(pool, *, cost: int, settlement: int, fee=0, provider=0, settled: bool = False) -> None:
    """A row; a settled provider share is POSTED (the earning machine's own
    rows are tested in test_earning_states.py)."""
    earning = pb.EARNING_STATE_POSTED if settlement == Settlement.SETTLED and provider else 0
    await pool.execute(
        """INSERT INTO metering.usage (job_id, consumer_account_id, provider_account_id, model, prompt_tokens,
               completion_tokens, node_prompt_tokens, node_completion_tokens, requests, duration_ms,
               price_input_per_mtok, price_output_per_mtok, price_per_request, cost_micros, fee_bps, outcome,
               started_at, finished_at, settlement, fee_micros, provider_micros, settled_at, earning)
           VALUES ($1, $2, $3, 'm', 0, 0, 0, 0, 1, 0, 0, 0, $4, $4, 1000, 1, now(), now(), $5, $6, $7,
                   CASE WHEN $8 THEN now() END, $9)""",
        uuid.UUID(bytes=os.urandom(16)), uuid.UUID(bytes=os.urandom(16)), uuid.UUID(bytes=os.urandom(16)),
        cost, settlement, fee, provider, settled, earning)


async def test_the_database_accepts_the_rows_the_machine_allows(pool):
    await _insert(pool, cost=10, settlement=Settlement.PENDING)
    await _insert(pool, cost=10, settlement=Settlement.SETTLED, fee=1, provider=9, settled=True)
    await _insert(pool, cost=0, settlement=Settlement.RELEASED, settled=True)
    await _insert(pool, cost=10, settlement=Settlement.EXPIRED, settled=True)
    await _insert(pool, cost=10, settlement=Settlement.REJECTED, settled=True)


@pytest.mark.parametrize("row", [
    dict(cost=10, settlement=Settlement.PENDING, settled=True),  # settled_at on a pending record
    dict(cost=10, settlement=Settlement.REJECTED),  # a final state without settled_at
    dict(cost=0, settlement=Settlement.SETTLED, settled=True),  # settled without a cost
    dict(cost=10, settlement=Settlement.RELEASED, settled=True),  # a cost released
    dict(cost=10, settlement=Settlement.EXPIRED, fee=1, provider=9, settled=True),  # paid, not settled
    dict(cost=10, settlement=9, settled=True),  # no such state
])
async def test_the_database_refuses_rows_that_break_the_machine(pool, row):
    with pytest.raises(asyncpg.CheckViolationError):
        await _insert(pool, **row)
