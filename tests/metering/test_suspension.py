"""A node the registry SUSPENDS loses its unreleased earnings: metering
follows WatchNodes and voids each held earning of the node, refunding the
partner who paid for it to the micro-credit; what was released stays, other
nodes' earnings stay held, and a late job of the suspended node is voided,
never released. The whole backend for real: ledger, registry, metering,
relay, scheduler and two node agents in front of a demo Triton."""

from __future__ import annotations

import os

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering.v1 import metering_pb2 as pb
from idlegrid.registry.v1 import registry_pb2 as rpb
from tests.harness.servers import metering_settings
from tests.harness.stack import start_stack
from tests.metering.earnings_support import account, end_window_now, in_state, record
from tests.scheduler.support import echo

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

HELD, RELEASED, VOIDED = pb.EARNING_STATE_HELD, pb.EARNING_STATE_RELEASED, pb.EARNING_STATE_VOIDED
REASON = "serves another model than it claims"


@pytest.fixture(scope="module")
async def stack(config, db_url):
    s = await start_stack(config, db_url, metering_settings=metering_settings(earnings_hold_s=3600))
    await s.add_node("a", models=("echo",))
    await s.add_node("b", models=("echo",))
    yield s
    await s.stop()


async def _late_job(stack, consumer: bytes, node_id: str) -> bytes:
    """A job of ``node_id`` whose usage arrives after the node was suspended
    (it was in flight), recorded as the scheduler records it."""
    job_id = os.urandom(16)
    r = await stack.ledger.Reserve(lpb.ReserveRequest(job_id=job_id, consumer_account_id=consumer, amount=10_000,
                                                      timeout_s=600))
    assert r.status == lpb.OPERATION_STATUS_OK
    now = Timestamp()
    now.GetCurrentTime()
    await stack.metering.RecordUsage(pb.RecordUsageRequest(record=pb.UsageRecord(
        job_id=job_id, consumer_account_id=consumer, provider_account_id=stack.provider_account,
        node_id=node_id, model="echo", requests=1, price_per_request=5_000, cost_micros=5_000,
        outcome=pb.OUTCOME_COMPLETED, started_at=now, finished_at=now)))
    return job_id


async def test_a_suspended_nodes_held_earnings_are_refunded_exactly(stack):
    a = stack.nodes["a"].node_id
    consumer = await stack.consumer(10**7)
    # Jobs on leases are held per (node, clearing window): the first job is
    # cleared (its lease closed) before the others run, so that its aggregate
    # can be released alone.
    on_a = [(await stack.scheduler.Infer(echo(consumer, node="a"))).job_id]
    await stack.settled()
    on_a += [(await stack.scheduler.Infer(echo(consumer, node="a"))).job_id for _ in range(2)]
    on_b = [(await stack.scheduler.Infer(echo(consumer, node="b"))).job_id for _ in range(2)]
    await stack.settled()
    assert (await record(stack, on_a[0])).aggregate_id not in {(await record(stack, j)).aggregate_id for j in on_a[1:]}
    assert [(await record(stack, j)).earning for j in on_a + on_b] == [HELD] * 5
    await end_window_now(stack, on_a[0])
    await in_state(stack, on_a[0], earning=RELEASED)
    held_a = [(await record(stack, j)).provider_micros for j in on_a[1:]]
    assert all(held_a)
    c0, p0 = await account(stack, consumer), await account(stack, stack.provider_account)

    r = await stack.registry.SetSuspended(rpb.SetSuspendedRequest(node_id=a, suspended=True, actor="test",
                                                                  reason=REASON))
    assert [n.state for n in r.nodes] == [rpb.NODE_STATE_SUSPENDED]
    for j in on_a[1:]:
        v = await in_state(stack, j, earning=VOIDED, what="the suspended node's earning voided")
        assert REASON in v.earning_note
    c1, p1 = await account(stack, consumer), await account(stack, stack.provider_account)
    assert c1.credits_posted - c0.credits_posted == sum(held_a)  # refunded to the micro-credit
    assert c1.debits_posted == c0.debits_posted
    assert p0.credits_pending - p1.credits_pending == sum(held_a)
    assert p1.credits_posted == p0.credits_posted  # the released earning stays
    assert (await record(stack, on_a[0])).earning == RELEASED
    assert [(await record(stack, j)).earning for j in on_b] == [HELD] * 2  # the other node's stay
    await stack.check_books()

    late = await _late_job(stack, consumer, a.hex())
    await in_state(stack, late, settlement=pb.SETTLEMENT_STATE_SETTLED)
    await end_window_now(stack, late)  # due at once, yet never released
    v = await in_state(stack, late, earning=VOIDED, what="the late job's earning voided")
    assert v.earning == VOIDED
    await stack.check_books()
