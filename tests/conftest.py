"""Shared fixtures: a real embedded PostgreSQL (never a server that happens to
run on the machine), a fresh database per test module, and real gRPC servers
in-process on free ports."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import asyncpg
import pytest

from idlegrid.common import logs
from idlegrid.common.config import Config

TOKEN = "test-service-token"
_db_counter = itertools.count(1)

# Tests must not pick up a developer's settings.
for _k in [k for k in os.environ if k.startswith("IDLEGRID_")]:
    del os.environ[_k]

logs.configure(fmt="console", level="warning")


@pytest.fixture(scope="session")
def pg_home() -> Path:
    return Path(tempfile.mkdtemp(prefix="idlegrid-test-pg-"))


@pytest.fixture(scope="session")
def pg_admin_url(pg_home: Path) -> str:
    """The embedded PostgreSQL server of this test session, stopped and
    deleted at the end of the session."""
    from idlegrid.common.db import embedded_server

    server = embedded_server(pg_home, cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


async def new_database(admin_url: str) -> str:
    name = f"t{os.getpid()}_{next(_db_counter)}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    base, _, query = admin_url.partition("?")
    base = base.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
async def db_url(pg_admin_url: str) -> str:
    """A fresh, empty database for this test module."""
    return await new_database(pg_admin_url)


def make_config(home: Path, **extra: str) -> Config:
    env = {"IDLEGRID_HOME": str(home), "IDLEGRID_SERVICE_TOKEN": TOKEN, **extra}
    return Config.from_env(env)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Config:
    return make_config(tmp_path_factory.mktemp("home"))
