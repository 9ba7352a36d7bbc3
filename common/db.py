"""PostgreSQL: the database URL (or an embedded server), connection pools, and
versioned migrations per service schema."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import asyncpg
import structlog

from idlegrid.common.config import Config
from idlegrid.common.errors import ConfigError

log = structlog.get_logger("db")

POOL_MIN = 1
COMMAND_TIMEOUT_S = 30.0
_MIGRATION_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")


def embedded_server(home: Path, *, cleanup_mode: str = "stop"):
    """Starts (or joins) the embedded PostgreSQL in ``home/pg``. With "stop",
    the server stops when the last process that joined it exits."""
    import logging as stdlib_logging
    import warnings

    warnings.filterwarnings("ignore", module="platformdirs")  # XDG_RUNTIME_DIR unset: harmless
    import pgserver

    stdlib_logging.getLogger("pgserver").setLevel(stdlib_logging.WARNING)
    home.mkdir(parents=True, exist_ok=True)
    return pgserver.get_server(home / "pg", cleanup_mode=cleanup_mode)


def embedded_url(home: Path) -> str:
    """The URL of the embedded PostgreSQL in ``home/pg`` (started if needed)."""
    return embedded_server(home).get_uri()


async def resolve_url(config: Config) -> str:
    """``IDLEGRID_DATABASE_URL``, or the embedded server in ``$IDLEGRID_HOME``."""
    if config.database_url:
        return config.database_url
    return await asyncio.to_thread(embedded_url, config.home)


async def create_pool(url: str, *, max_size: int = 10, min_size: int = POOL_MIN) -> asyncpg.Pool:
    try:
        return await asyncpg.create_pool(
            url,
            min_size=min(min_size, max_size),
            max_size=max_size,
            command_timeout=COMMAND_TIMEOUT_S,
            server_settings={"application_name": "idlegrid", "timezone": "UTC"},
        )
    except (OSError, asyncpg.PostgresError) as e:
        raise ConfigError(f"cannot connect to the database: {e}") from e


def _migrations(directory: Path) -> list[tuple[int, str, Path]]:
    found = []
    for path in sorted(directory.iterdir()):
        m = _MIGRATION_NAME.match(path.name)
        if m:
            found.append((int(m.group(1)), path.stem, path))
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"duplicate migration versions in {directory}")
    return found


async def migrate(pool: asyncpg.Pool, schema: str, directory: Path) -> list[str]:
    """Applies the migrations in ``directory`` that ``schema`` lacks, in order,
    in one transaction under an advisory lock: safe to run twice, or from two
    processes at once. Returns the names applied."""
    if not re.fullmatch(r"[a-z_]+", schema):
        raise ConfigError(f"bad schema name {schema!r}")
    applied: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"idlegrid.migrate.{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {schema}.schema_migrations")}
        for version, name, path in _migrations(directory):
            if version in done:
                continue
            await conn.execute(path.read_text())
            await conn.execute(
                f"INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(name)
    if applied:
        log.info("db.migrated", schema=schema, applied=applied)
    return applied
