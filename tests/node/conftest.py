"""Node agent fixtures: ``reg`` and ``make_registry`` (tests/conftest.py), a
real registry that verifies nodes, with the heartbeat settings below, and
the session's demo Triton (``triton``)."""

from __future__ import annotations

import pytest

from idlegrid.registry.settings import RegistrySettings
from tests.registry.conftest import LOOPBACK

# Agents learn their state from heartbeat answers: a short interval keeps the
# tests quick; a lease of many intervals keeps a busy machine from expiring them.
AGENT_REGISTRY = RegistrySettings(heartbeat_interval_ms=200, lease_intervals=20, sweep_interval_ms=50,
                                  load_report_interval_ms=50, **LOOPBACK)


@pytest.fixture
def registry_settings() -> RegistrySettings:
    return AGENT_REGISTRY
