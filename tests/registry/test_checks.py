"""ReportCheck: spot-check verdicts and token-count disagreements build each
node's reputation (score, sampling rate, reasons), counted once per (node,
job, kind); a failed spot check suspends the node with the job and verdict
in its detail and puts its provider under review (its other nodes sampled
harder). Verification is skipped (the registry's documented test setting)."""

from __future__ import annotations

import os

import grpc
import pytest

from idlegrid.registry import reputation
from idlegrid.registry.reputation import Reputation
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.registry.support import expect_status, next_delta, read_snapshot, registration

READY, SUSPENDED = pb.NODE_STATE_READY, pb.NODE_STATE_SUSPENDED
SPOT, COUNT = pb.CHECK_KIND_SPOT_CHECK, pb.CHECK_KIND_TOKEN_COUNT


async def ready(h, provider):
    node = await h.register(provider, registration())
    await h.wait_state(node.node_id, READY)
    return node


def report(h, node, *, kind=SPOT, passed=True, job_id: bytes | None = None, detail: str = ""):
    return h.admin.ReportCheck(pb.ReportCheckRequest(node_id=node.node_id, job_id=job_id or os.urandom(16),
                                                     kind=kind, passed=passed, detail=detail,
                                                     checker_node_id=os.urandom(16)))


def test_the_score_starts_at_a_half_and_the_sampling_rate_falls_with_a_good_record():
    r = Reputation()
    assert r.score == 0.5 and r.sample_rate(under_review=False) == reputation.NEW_RATE
    for _ in range(reputation.NEW_CHECKS - 1):
        r.record(SPOT, True, "")
    assert r.sample_rate(under_review=False) == reputation.NEW_RATE  # still new
    r.record(SPOT, True, "")
    assert r.score > 0.95 and r.sample_rate(under_review=False) == reputation.FLOOR_RATE
    assert r.sample_rate(under_review=True) == reputation.REVIEW_RATE
    passed_only = r.score
    r.record(COUNT, False, "disagreed")
    assert r.score < passed_only and r.count_disagreements == 1
    r.record(SPOT, False, "failed")
    assert r.score < passed_only and r.reasons == ["failed", "disagreed"]
    for i in range(reputation.REASONS_MAX + 3):
        r.record(COUNT, False, f"d{i}")
    assert len(r.reasons) == reputation.REASONS_MAX and r.reasons[0] == f"d{reputation.REASONS_MAX + 2}"


async def test_passed_checks_raise_the_score_once_per_job(fast):
    p = await fast.provider()
    node = await ready(fast, p)
    fresh = (await fast.node(node.node_id)).reputation
    assert (fresh.score, fresh.sample_rate, fresh.checks_passed) == (0.5, reputation.NEW_RATE, 0)
    job = os.urandom(16)
    first = (await report(fast, node, job_id=job)).node.reputation
    again = (await report(fast, node, job_id=job)).node.reputation  # the same verdict again: counted once
    assert first.checks_passed == again.checks_passed == 1 and first.score > 0.5
    assert (await fast.node(node.node_id)).state == READY


async def test_a_token_count_disagreement_lowers_the_score_with_a_reason(fast):
    p = await fast.provider()
    node = await ready(fast, p)
    job = os.urandom(16)
    r = (await report(fast, node, kind=COUNT, passed=False, job_id=job, detail="node said 90, platform 12")).node
    assert r.reputation.count_disagreements == 1 and r.reputation.score < 0.5
    assert r.reputation.reasons == [f"token count of job {job.hex()} disagreed: node said 90, platform 12"]
    assert r.state == READY
    # The same job's spot check is another kind: it counts too.
    assert (await report(fast, node, job_id=job)).node.reputation.checks_passed == 1


async def test_a_failed_spot_check_suspends_the_node_and_puts_its_provider_under_review(fast):
    p = await fast.provider()
    cheat, sibling = await ready(fast, p), await ready(fast, p)
    bystander = await ready(fast, await fast.provider())
    watch = fast.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    await read_snapshot(watch)
    job = os.urandom(16)
    r = await report(fast, cheat, passed=False, job_id=job, detail="token 3 ranked 812th, logprob -14.2")
    assert (r.node.state, r.node.state_reason) == (SUSPENDED, pb.STATE_REASON_CHECK_FAILED)
    assert job.hex() in r.node.state_detail and "ranked 812th" in r.node.state_detail
    assert r.node.reputation.checks_failed == 1 and r.node.reputation.score < 0.5
    assert r.node.reputation.reasons[0].startswith(f"spot check of job {job.hex()} failed")
    seen = {}
    while len(seen) < 2:
        d = await next_delta(watch)
        seen[d.node.node_id] = d.node
    watch.cancel()
    assert seen[sibling.node_id].reputation.sample_rate == reputation.REVIEW_RATE  # sampled harder
    assert seen[cheat.node_id].state == SUSPENDED
    assert (await fast.node(bystander.node_id)).reputation.sample_rate == reputation.NEW_RATE
    # Counted once; a passed check later does not lift the suspension.
    again = await report(fast, cheat, passed=False, job_id=job, detail="again")
    assert again.node.reputation.checks_failed == 1
    assert (await report(fast, cheat)).node.state == SUSPENDED


async def test_reputation_survives_a_registry_restart(make_registry, pg_admin_url):
    from idlegrid.registry.settings import RegistrySettings
    from tests.harness import new_database
    from tests.registry.conftest import LOOPBACK

    settings = RegistrySettings(heartbeat_interval_ms=10_000, skip_verification=True, **LOOPBACK)
    db = await new_database(pg_admin_url)
    first = await make_registry(settings, db_url=db)
    p = await first.provider()
    node = await ready(first, p)
    for _ in range(3):
        await report(first, node)
    await report(first, node, kind=COUNT, passed=False, detail="off by 5")
    before = (await first.node(node.node_id)).reputation
    await first.stop()
    second = await make_registry(settings, db_url=db)
    after = (await second.node(node.node_id)).reputation
    assert after == before and after.checks_passed == 3 and after.reasons[0].endswith("off by 5")


@pytest.mark.parametrize("fields", [
    dict(job_id=b""), dict(job_id=b"\x00" * 16), dict(kind=pb.CHECK_KIND_UNSPECIFIED), dict(node_id=b"\x01"),
    dict(detail="x" * 1025), dict(checker_node_id=b"\x01" * 3),
])
async def test_a_malformed_report_is_refused(fast, fields):
    base = dict(node_id=os.urandom(16), job_id=os.urandom(16), kind=SPOT, passed=True)
    await expect_status(fast.admin.ReportCheck(pb.ReportCheckRequest(**{**base, **fields})),
                        grpc.StatusCode.INVALID_ARGUMENT)


async def test_a_report_on_an_unknown_node_is_not_found(fast):
    await expect_status(fast.admin.ReportCheck(pb.ReportCheckRequest(
        node_id=os.urandom(16), job_id=os.urandom(16), kind=SPOT, passed=True)), grpc.StatusCode.NOT_FOUND)
