"""Registry fixtures: ``reg`` and ``make_registry`` (tests/conftest.py) with
long leases, ``fast`` for tests that need no verification, and the session's
demo Triton (``triton``)."""

from __future__ import annotations

import pytest

from idlegrid.registry.settings import RegistrySettings

# Long leases unless a test is about leases: nothing expires while a test looks.
# The tests' demo Tritons listen on loopback: direct endpoints are enabled for
# it (the operator's opt-in); linked nodes are the subject of test_links.py.
LOOPBACK = {"direct_endpoints": True, "direct_allow_cidrs": ("127.0.0.0/8",)}
DEFAULT = RegistrySettings(heartbeat_interval_ms=10_000, sweep_interval_ms=50, load_report_interval_ms=50,
                           **LOOPBACK)


@pytest.fixture
def registry_settings() -> RegistrySettings:
    return DEFAULT


@pytest.fixture
async def fast(make_registry):
    """A registry that skips verification (its documented test/bench setting)."""
    return await make_registry(RegistrySettings(heartbeat_interval_ms=10_000, sweep_interval_ms=50,
                                                load_report_interval_ms=50, skip_verification=True, **LOOPBACK))
