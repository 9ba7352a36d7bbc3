"""The chaos soak, short (issue 13): the whole marketplace as separate
processes on the suite's PostgreSQL, mixed partner traffic, and one SIGKILL
and restart of every process kind (ledger, metering, registry, relay,
scheduler, gateway, the demo node) in a seeded order. Afterwards every
answered job has its usage record, no consumer spent more than it was
given, the ledger verifies, and no request got a 500.

Scheduler kills are quiesced here (``quiesce_scheduler``): traffic is held
and every answered job's usage record is waited for before the kill. Since
issue 12 a job's record is durable before its answer, and ``idlegrid bench
soak`` (not quiesced) checks that no kill loses one (``lost_usage`` /
``lost_usage_near_scheduler_kill``). Money moves when the credit leases are
cleared: ``unsettled`` counts records, leases and clearing windows not yet
on the ledger (a killed scheduler's leases clear after the soak's
IDLEGRID_SCHEDULER_MAX_JOB_S).
"""

from __future__ import annotations

import pytest

from idlegrid.bench.chaos import KINDS
from idlegrid.bench.soak import SoakOptions, failed, soak
from tests.harness.basics import new_database

pytestmark = pytest.mark.slow

SEED = 13


async def test_every_process_killed_once_loses_no_usage_and_no_money(pg_admin_url, tmp_path):
    db_url = await new_database(pg_admin_url)
    # One round (the clients stop when it ends; duration_s only bounds it): each kind once, 1.5-3 s apart, recoveries overlapping the next kills (a node the scheduler
    # quarantined after a crash stays out for its quarantine, so waiting for each recovery would take minutes).
    opts = SoakOptions(duration_s=150, seed=SEED, clients=3, gap_s=(1.5, 3.0), kills_max=len(KINDS),
                       serving_between_kills=False, quiesce_scheduler=True, db_url=db_url, home=tmp_path,
                       max_job_s=20, lease_slack_s=5)  # a killed scheduler's leases clear ~25 s after their window

    result = await soak(opts)

    assert result["kills"] == dict.fromkeys(KINDS, 1), result["kill_times_s"]
    assert failed(result) == [], result
    assert result["lost_usage"] == 0 and result["overspend_micros"] == 0 and result["verify_ok"]
    assert result["answered"] > 0 and result["billed"] == result["answered"], result
    assert result["unsettled"] == 0 and result["duplicate_job_ids"] == 0 and result["topup_unknown"] == 0, result
    assert result["crashed"] == [], result
    bad = {k: n for k, n in result["outcomes"].items() if k.endswith((":500", ":200_without_job_id"))}
    assert bad == {}, result["outcomes"]
