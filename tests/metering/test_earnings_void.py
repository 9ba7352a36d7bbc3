"""Voiding a node's earnings (an operator's decision, VoidNodeEarnings): every
earning of the node still held is voided and refunded, to the micro-credit,
to the partner who paid for it; released earnings and other nodes' stay;
retries and crashes between the ledger and metering change nothing twice.
Also the spot-checker's verdicts per job. A real ledger and metering on
Postgres, with a release window long enough that nothing is released unless
a test ends a job's window."""

from __future__ import annotations

import argparse
import dataclasses

import grpc
import pytest

from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering import cli as metering_cli
from idlegrid.metering.v1 import metering_pb2 as pb
from tests.metering.earnings_support import (
    FEE_BPS,
    account,
    end_window_now,
    in_state,
    job,
    parties,
    record,
    share,
    stack_with_window,
)

HOLD_S = 3600
HELD, RELEASED, VOIDED = pb.EARNING_STATE_HELD, pb.EARNING_STATE_RELEASED, pb.EARNING_STATE_VOIDED


@pytest.fixture(scope="module")
async def stack(config, db_url):
    assert config.platform_fee_bps == FEE_BPS
    s = await stack_with_window(config, db_url, HOLD_S)
    yield s
    await s.stop()


def _void(node_id: str, reason: str = "an operator found it cheating") -> pb.VoidNodeEarningsRequest:
    return pb.VoidNodeEarningsRequest(node_id=node_id, reason=reason)


async def test_a_nodes_held_earnings_are_refunded_exactly_and_released_ones_stay(stack):
    p = await parties(stack.ledger)
    released = await job(stack, p, 1_000, node_id="bad")
    await end_window_now(stack, released)
    await in_state(stack, released, earning=RELEASED)
    held = [await job(stack, p, c, node_id="bad") for c in (2_345, 3_456)]
    other = await job(stack, p, 4_567, node_id="good")
    assert [(await record(stack, j)).earning for j in (*held, other)] == [HELD] * 3
    c0, p0 = await account(stack, p.consumer), await account(stack, p.provider)

    r = await stack.metering.VoidNodeEarnings(_void("bad"))
    refund = share(2_345) + share(3_456)
    assert (r.jobs_voided, r.refunded_micros, r.jobs_pending) == (2, refund, 0)
    c1, p1 = await account(stack, p.consumer), await account(stack, p.provider)
    assert c1.credits_posted - c0.credits_posted == refund  # back with the partner, to the micro-credit
    assert c1.debits_posted == c0.debits_posted  # the charges stand: the refund is a new transfer
    assert p0.credits_pending - p1.credits_pending == refund  # held no more
    assert p1.credits_posted == p0.credits_posted == share(1_000)  # the released earning stays
    assert p1.credits_pending == share(4_567)  # the other node's stays held
    for j in held:
        v = await record(stack, j)
        assert (v.earning, v.earning_note) == (VOIDED, "an operator found it cheating")
        assert v.HasField("earning_resolved_at")
    assert (await record(stack, released)).earning == RELEASED
    assert (await record(stack, other)).earning == HELD
    s = await stack.metering.GetEarnings(pb.GetEarningsRequest(provider_account_id=p.provider))
    assert (s.total.voided_micros, s.total.voided_jobs) == (refund, 2)
    assert (s.total.available_micros, s.total.held_micros) == (share(1_000), share(4_567))
    assert s.total.HasField("next_release_at")
    await stack.check_books()

    again = await stack.metering.VoidNodeEarnings(_void("bad", "asked twice"))  # a retry: nothing moves
    assert (again.jobs_voided, again.refunded_micros, again.jobs_pending) == (0, 0, 0)
    assert await account(stack, p.consumer) == c1
    later = await job(stack, p, 5_000, node_id="bad")  # recorded after the decision: not covered
    assert (await record(stack, later)).earning == HELD
    await stack.check_books()


async def test_a_crash_between_the_ledger_and_the_record_is_finished_once(stack):
    """The worker applied an earning's end on the ledger but died before
    recording it: the next pass gets ALREADY_APPLIED (or the ledger's other
    ending) and records what the ledger did, moving no money twice."""
    p = await parties(stack.ledger)
    rel, vo, raced = [await job(stack, p, c, node_id="crashy") for c in (1_111, 2_222, 3_333)]
    assert (await stack.ledger.ReleaseEarnings(lpb.EarningsRequest(job_ids=[rel, raced]))).results[0].status == \
        lpb.OPERATION_STATUS_OK
    assert (await stack.ledger.VoidEarnings(lpb.EarningsRequest(job_ids=[vo]))).results[0].status == \
        lpb.OPERATION_STATUS_OK
    c0, p0 = await account(stack, p.consumer), await account(stack, p.provider)

    await end_window_now(stack, rel)
    await in_state(stack, rel, earning=RELEASED)
    r = await stack.metering.VoidNodeEarnings(_void("crashy"))
    assert (r.jobs_voided, r.refunded_micros) == (1, share(2_222))  # only `vo`: `raced` was released
    assert (await record(stack, vo)).earning == VOIDED
    assert (await record(stack, raced)).earning == RELEASED  # the ledger released it first
    assert await account(stack, p.consumer) == c0  # refunded once, by the first (crashed) call
    assert await account(stack, p.provider) == p0
    await stack.check_books()


async def test_check_results_are_recorded_once_per_job(stack):
    p = await parties(stack.ledger)
    j = await job(stack, p, 1_000, node_id="n")
    r = await stack.metering.RecordCheckResult(pb.RecordCheckResultRequest(job_id=j, passed=False,
                                                                           detail="logprob -9.1 < -4"))
    assert r.changed and r.record.check_result == pb.CHECK_RESULT_FAILED
    assert r.record.check_detail == "logprob -9.1 < -4" and r.record.HasField("checked_at")
    again = await stack.metering.RecordCheckResult(pb.RecordCheckResultRequest(job_id=j, passed=False))
    assert not again.changed and again.record.check_detail == "logprob -9.1 < -4"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stack.metering.RecordCheckResult(pb.RecordCheckResultRequest(job_id=j, passed=True))
    assert e.value.code() == grpc.StatusCode.ABORTED
    assert (await record(stack, j)).check_result == pb.CHECK_RESULT_FAILED
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stack.metering.RecordCheckResult(pb.RecordCheckResultRequest(job_id=b"\x07" * 16, passed=True))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("call, request_", [
    ("VoidNodeEarnings", pb.VoidNodeEarningsRequest(node_id="", reason="r")),
    ("VoidNodeEarnings", pb.VoidNodeEarningsRequest(node_id="n" * 129, reason="r")),
    ("VoidNodeEarnings", pb.VoidNodeEarningsRequest(node_id="n", reason="")),
    ("VoidNodeEarnings", pb.VoidNodeEarningsRequest(node_id="n", reason="r" * 1025)),
    ("RecordCheckResult", pb.RecordCheckResultRequest(job_id=b"short", passed=True)),
    ("RecordCheckResult", pb.RecordCheckResultRequest(job_id=b"\x01" * 16, detail="d" * 1025)),
], ids=["no node", "long node", "no reason", "long reason", "bad job", "long detail"])
async def test_bad_input_is_refused_and_changes_nothing(stack, call, request_):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await getattr(stack.metering, call)(request_)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_operator_voids_a_node_from_the_cli(stack, config, capsys):
    """``idlegrid metering void-earnings NODE --reason R`` (the operator's token)."""
    p = await parties(stack.ledger)
    j = await job(stack, p, 7_000, node_id="cli-node")
    c0 = await account(stack, p.consumer)
    args = argparse.Namespace(node_id="cli-node", reason="operator: a cheating node")
    assert await metering_cli._void(args, dataclasses.replace(config, addrs={**config.addrs,
                                                                             "metering": stack.addrs["metering"]})) == 0
    assert f"1 held earnings voided, {share(7_000):,} micro-credits refunded" in capsys.readouterr().out
    assert (await account(stack, p.consumer)).credits_posted - c0.credits_posted == share(7_000)
    assert (await record(stack, j)).earning_note == "operator: a cheating node"
    await stack.check_books()
