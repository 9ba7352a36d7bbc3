"""Shared fixtures: a real embedded PostgreSQL (never a server that happens to
run on the machine), a fresh database per test module, the session's pool of
demo Tritons, and registries in-process on free ports. The builders behind
them are in tests/harness."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.harness import logs
from tests.harness.basics import TOKEN, make_config, new_database, throwaway_durability
from tests.harness.tritons import POOL

__all__ = ["TOKEN", "make_config", "new_database"]  # kept importable from here for older imports

# Tests must not pick up a developer's settings.
for _k in [k for k in os.environ if k.startswith("IDLEGRID_")]:
    del os.environ[_k]

logs.quiet()


@pytest.fixture(scope="session")
def pg_home() -> Path:
    return Path(tempfile.mkdtemp(prefix="idlegrid-test-pg-"))


@pytest.fixture(scope="session")
async def pg_admin_url(pg_home: Path) -> str:
    """The embedded PostgreSQL server of this test session, stopped and
    deleted at the end of the session. Its data is thrown away, so it need
    not survive a power cut: commits skip the flush to disk (basics.py)."""
    from idlegrid.common.db import embedded_server

    server = embedded_server(pg_home, cleanup_mode="delete")
    url = server.get_uri()
    await throwaway_durability(url)
    yield url
    server.cleanup()


@pytest.fixture(scope="module")
async def db_url(pg_admin_url: str) -> str:
    """A fresh, empty database for this test module."""
    return await new_database(pg_admin_url)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return make_config(tmp_path_factory.mktemp("home"))


# ------------------------------------------------------------- demo Tritons

@pytest.fixture(scope="session")
def tritons():
    """The session's pool of demo Tritons (tests/harness/tritons.py). At the
    end every one is stopped, and each shared one must stop cleanly."""
    yield POOL
    codes = POOL.close()
    assert all(code == 0 for code in codes.values()), f"a shared demo Triton did not stop cleanly: {codes}"


@pytest.fixture(scope="session")
def triton(tritons):
    """The session's demo Triton serving both models, shared by every test."""
    return tritons.shared()


@pytest.fixture(scope="session")
def failing_triton(tritons):
    """The session's demo Triton whose every inference fails (its models load
    and report ready)."""
    return tritons.shared(fail=True)


TRITON_FIXTURES = frozenset({"tritons", "triton", "failing_triton"})


def pytest_collection_modifyitems(items):
    """A test that uses a demo Triton is a scenario, so it is ``slow`` even
    when its module forgot to say so (``make test-fast`` stays fast)."""
    for item in items:
        if TRITON_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session):
    POOL.close()  # whatever a fixture teardown did not reach (an interrupted run)


# --------------------------------------------------------------- registries

@pytest.fixture
def registry_settings():
    """The settings ``make_registry`` starts with unless told otherwise; a
    test folder overrides this fixture with its own."""
    from idlegrid.registry.settings import RegistrySettings

    return RegistrySettings()


@pytest.fixture
async def make_registry(pg_admin_url, config, registry_settings):
    """``await make_registry(settings=..., db_url=..., port=...)``: a started
    registry (a fresh database unless ``db_url``); all are stopped after the
    test."""
    from tests.harness.registry import start_registry

    started = []

    async def make(settings=None, db_url: str | None = None, port: int = 0):
        h = await start_registry(config, db_url or await new_database(pg_admin_url),
                                 settings=settings or registry_settings, port=port)
        started.append(h)
        return h

    yield make
    for h in reversed(started):
        await h.stop()


@pytest.fixture
async def reg(make_registry):
    """A registry with the folder's settings, really verifying nodes."""
    return await make_registry()
