"""Registry fixtures: a registry in-process on a free port with a fresh
embedded-Postgres database per test, and the session's demo Triton."""

from __future__ import annotations

import pytest

from idlegrid.registry.settings import RegistrySettings
from tests.registry.support import demo_triton, fresh_db, start_harness, stop_harness

# Long leases unless a test is about leases: nothing expires while a test looks.
DEFAULT = RegistrySettings(heartbeat_interval_ms=10_000, sweep_interval_ms=50, load_report_interval_ms=50)


@pytest.fixture(scope="session")
def triton():
    return demo_triton()


@pytest.fixture
async def make_registry(pg_admin_url, config):
    """``await make_registry(settings=..., db_url=...)``: a started registry
    (fresh database unless ``db_url``); all are stopped after the test."""
    started = []

    async def make(settings: RegistrySettings = DEFAULT, db_url: str | None = None, port: int = 0):
        h = await start_harness(settings, config, db_url or await fresh_db(pg_admin_url), port)
        started.append(h)
        return h

    yield make
    for h in reversed(started):
        await stop_harness(h)


@pytest.fixture
async def reg(make_registry):
    """A registry that really verifies nodes."""
    return await make_registry()


@pytest.fixture
async def fast(make_registry):
    """A registry that skips verification (its documented test/bench setting)."""
    return await make_registry(RegistrySettings(heartbeat_interval_ms=10_000, sweep_interval_ms=50,
                                                load_report_interval_ms=50, skip_verification=True))
