"""Node agent fixtures: the session's demo Triton, and a registry (real,
verifying) in-process on a fresh database per test."""

from __future__ import annotations

import pytest

from idlegrid.registry.settings import RegistrySettings
from tests.registry.support import demo_triton, fresh_db, start_harness, stop_harness

# Agents learn their state from heartbeat answers: a short interval keeps the
# tests quick; a lease of many intervals keeps a busy machine from expiring them.
AGENT_REGISTRY = RegistrySettings(heartbeat_interval_ms=200, lease_intervals=20, sweep_interval_ms=50,
                                  load_report_interval_ms=50)


@pytest.fixture(scope="session")
def triton():
    return demo_triton()


@pytest.fixture
async def make_registry(pg_admin_url, config):
    started = []

    async def make(settings: RegistrySettings = AGENT_REGISTRY, db_url: str | None = None, port: int = 0):
        h = await start_harness(settings, config, db_url or await fresh_db(pg_admin_url), port)
        started.append(h)
        return h

    yield make
    for h in reversed(started):
        await stop_harness(h)


@pytest.fixture
async def reg(make_registry):
    return await make_registry()
