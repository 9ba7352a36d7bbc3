"""What every in-process service of a test shares: the service token, a
configuration that ignores the developer's environment, and a fresh database
on the session's embedded PostgreSQL."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import asyncpg

from idlegrid.common.config import Config

TOKEN = "test-service-token"
_db_counter = itertools.count(1)


def make_config(home: Path, **extra: str) -> Config:
    env = {"IDLEGRID_HOME": str(home), "IDLEGRID_SERVICE_TOKEN": TOKEN, **extra}
    return Config.from_env(env)


async def throwaway_durability(admin_url: str) -> None:
    """Turns off what only protects data against a crash of the machine
    (flushes to disk at commit and checkpoint): the test server's data lives
    for one session. Transactions, constraints and crash safety of every
    process but PostgreSQL itself are unchanged."""
    conn = await asyncpg.connect(admin_url)
    try:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            await conn.execute(f"ALTER SYSTEM SET {setting} = off")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def new_database(admin_url: str) -> str:
    """A new, empty database on the server at ``admin_url``; its URL."""
    name = f"t{os.getpid()}_{next(_db_counter)}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    base, _, query = admin_url.partition("?")
    base = base.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")
