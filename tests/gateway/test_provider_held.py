"""A provider sees its earnings held, released and voided, to the
micro-credit, with each job's earning and spot-check result, through GET
/v1/provider/earnings and ``idlegrid provider earnings``: a whole stack with
a release window of an hour, so that nothing is released unless a test ends
a job's window."""

from __future__ import annotations

import argparse
import uuid

import numpy as np
import pytest

from idlegrid.cli.earnings import earnings as cli_earnings
from idlegrid.metering.v1 import metering_pb2 as mpb
from tests.gateway.conftest import REGISTRY, node_config
from tests.harness.rest import open_rest
from tests.harness.servers import metering_settings
from tests.harness.stack import PARTS, start_stack
from tests.metering.earnings_support import end_window_now, in_state

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton


@pytest.fixture(scope="module")
async def stack(config, db_url, triton):
    services = await start_stack(config, db_url, parts=PARTS, provider=False, registry_settings=REGISTRY,
                                 metering_settings=metering_settings(earnings_hold_s=3600))
    try:
        rest = await open_rest(services, node_config=node_config())
    except BaseException:
        await services.stop()
        raise
    yield rest
    await services.stop()


async def _echo(stack, key: str, n: int) -> list[bytes]:
    jobs = []
    async with stack.client(key) as c:
        for _ in range(n):
            r = await c.post("/v2/models/echo/infer", json={"inputs": [
                {"name": "INPUT0", "shape": [1, 3], "datatype": "FP32", "data": np.ones(3).tolist()}]})
            assert r.status_code == 200, r.text
            jobs.append(uuid.UUID(r.headers["x-idlegrid-job-id"]).bytes)
    return jobs


async def test_held_released_and_voided_earnings_and_check_results(stack, config, capsys):
    services = stack.stack
    _, key = await stack.consumer()
    # A node's earnings are held per clearing aggregate (its jobs in one
    # clearing window): settled() clears every lease, so the first job is
    # alone in its aggregate and the next two in a later one.
    jobs = await _echo(stack, key, 1)
    await services.settled()
    jobs += await _echo(stack, key, 2)
    await services.settled()
    aggregates = {(await in_state(services, j, earning=mpb.EARNING_STATE_HELD)).aggregate_id for j in jobs}
    assert len(aggregates) == 2 and b"" not in aggregates
    shares = [(await in_state(services, j, earning=mpb.EARNING_STATE_HELD)).provider_micros for j in jobs]
    e = await stack.earnings()
    assert (e["held_micros"], e["earned_micros"], e["available_micros"]) == (sum(shares), 0, 0)
    assert e["balance_micros"] == 0 and e["next_release_at"] is not None
    items = {j["job_id"]: j for j in e["jobs"]["data"]}
    first = items[str(uuid.UUID(bytes=jobs[0]))]
    assert first["earning"] == "held" and first["earning_release_at"] and first["check_result"] == "unchecked"

    await end_window_now(services, jobs[0])
    await in_state(services, jobs[0], earning=mpb.EARNING_STATE_RELEASED)
    await services.metering.RecordCheckResult(mpb.RecordCheckResultRequest(job_id=jobs[1], passed=False,
                                                                           detail="wrong model"))
    r = await services.metering.VoidNodeEarnings(mpb.VoidNodeEarningsRequest(
        node_id=stack.node_id.hex(), reason="failed a spot check"))
    assert (r.jobs_voided, r.refunded_micros) == (2, sum(shares[1:]))

    e = await stack.earnings()
    assert (e["earned_micros"], e["available_micros"], e["released_micros"]) == (shares[0],) * 3
    assert (e["held_micros"], e["voided_micros"], e["next_release_at"]) == (0, sum(shares[1:]), None)
    node = {n["node_id"]: n for n in e["by_node"]}[stack.node_id.hex()]
    assert (node["released_micros"], node["voided_micros"], node["held_micros"]) == (shares[0], sum(shares[1:]), 0)
    items = {j["job_id"]: j for j in e["jobs"]["data"]}
    checked = items[str(uuid.UUID(bytes=jobs[1]))]
    assert (checked["earning"], checked["earning_note"]) == ("voided", "failed a spot check")
    assert (checked["check_result"], checked["check_detail"]) == ("failed", "wrong model")
    assert items[str(uuid.UUID(bytes=jobs[0]))]["earning"] == "released"
    await services.check_books()

    # The CLI shows the same figures.
    args = argparse.Namespace(url=stack.url, key=stack.provider_key, json=False, demo_key="provider_key")
    code = await cli_earnings(args, config)
    out = capsys.readouterr().out
    assert code == 0
    assert "held" in out and "voided" in out and "failed" in out and f"{shares[0]:,}" in out
