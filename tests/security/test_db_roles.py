"""One database role per service schema (idlegrid_<schema>), made by
``idlegrid migrate``: DML on its own schema only, no DDL, no other schema.
A service runs on its role with IDLEGRID_MIGRATE_ON_START=0. Against the
embedded PostgreSQL."""

from __future__ import annotations

import asyncpg
import pytest

from idlegrid.cli.migrate import SCHEMAS, migrate_all
from idlegrid.common import db
from idlegrid.common.config import Config
from tests.harness import new_database


@pytest.fixture(scope="module")
async def migrated(pg_admin_url):
    url = await new_database(pg_admin_url)
    await migrate_all(url)
    await migrate_all(url)  # twice: idempotent
    return url


async def _connect(url: str, schema: str) -> asyncpg.Connection:
    return await asyncpg.connect(db.role_url(url, schema))


async def _table(conn, schema: str) -> str:
    return await conn.fetchval(
        "SELECT quote_ident(table_name) FROM information_schema.tables WHERE table_schema = $1"
        " AND table_name NOT LIKE 'schema_%' ORDER BY table_name LIMIT 1", schema)


@pytest.mark.parametrize("schema", SCHEMAS)
async def test_a_service_role_reads_and_writes_its_schema_only(migrated, schema):
    admin = await asyncpg.connect(migrated)
    try:
        tables = {s: await _table(admin, s) for s in SCHEMAS}
    finally:
        await admin.close()
    conn = await _connect(migrated, schema)
    try:
        assert await conn.fetchval("SELECT current_user") == f"idlegrid_{schema}"
        await conn.fetch(f"SELECT * FROM {schema}.{tables[schema]} LIMIT 1")
        for other in SCHEMAS:
            if other != schema:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetch(f"SELECT * FROM {other}.{tables[other]} LIMIT 1")
        for ddl in (f"CREATE TABLE {schema}.intruder (x int)", f"ALTER TABLE {schema}.{tables[schema]} ADD COLUMN x int",
                    f"DROP TABLE {schema}.{tables[schema]}", f"TRUNCATE {schema}.{tables[schema]}",
                    f"CREATE SCHEMA {schema}_2", "CREATE TABLE public.intruder (x int)"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(ddl)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the migrations' history is the migrator's
            await conn.execute(f"DELETE FROM {schema}.schema_migrations")
    finally:
        await conn.close()


async def test_services_run_on_their_roles_without_migrating(migrated, tmp_path):
    """With IDLEGRID_MIGRATE_ON_START=0 the ledger starts on idlegrid_ledger
    (no DDL needed); on an unmigrated database it would find no tables."""
    from idlegrid.ledger import service as ledger_service

    config = Config.from_env({"IDLEGRID_HOME": str(tmp_path), "IDLEGRID_MIGRATE_ON_START": "0"})
    assert not config.migrate_on_start
    srv = await ledger_service.start(config, port=0, database_url=db.role_url(migrated, "ledger"))
    await srv.stop(0)
    metering_role = db.role_url(migrated, "metering")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # someone else's role: not even the ledger's tables
        await ledger_service.start(config, port=0, database_url=metering_role)


def test_migrate_on_start_defaults_on_and_refuses_nonsense(tmp_path):
    from idlegrid.common.errors import ConfigError

    assert Config.from_env({"IDLEGRID_HOME": str(tmp_path)}).migrate_on_start
    with pytest.raises(ConfigError, match="IDLEGRID_MIGRATE_ON_START"):
        Config.from_env({"IDLEGRID_HOME": str(tmp_path), "IDLEGRID_MIGRATE_ON_START": "yes"})


def test_role_urls_keep_the_server_and_database():
    url = "postgresql://postgres:pw@db.internal:5432/idlegrid?sslmode=require"
    assert db.role_url(url, "ledger", "p@ss word") == \
        "postgresql://idlegrid_ledger:p%40ss%20word@db.internal:5432/idlegrid?sslmode=require"
    assert db.role_url(url, "gateway") == "postgresql://idlegrid_gateway@db.internal:5432/idlegrid?sslmode=require"
