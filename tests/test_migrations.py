"""The migration mechanism (``idlegrid.common.db.migrate``) on every service
schema: versioned migrations applied once each with their checksum, every
SQL function defined by its one canonical file (``<service>/sql/<name>.sql``)
and re-applied when that file changes, and a loud failure when an applied
migration was edited or removed."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import asyncpg
import pytest

from idlegrid.common import db
from idlegrid.common.errors import ConfigError
from tests.harness import new_database

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {
    "ledger": ROOT / "ledger" / "migrations",
    "registry": ROOT / "services" / "registry" / "migrations",
    "metering": ROOT / "services" / "metering" / "migrations",
    "gateway": ROOT / "gateway" / "migrations",
}
_BODY = re.compile(r"\bAS\s+\$(\w*)\$(.*)\$\1\$", re.DOTALL)


def _normalised(text: str) -> str:
    """Without trailing spaces and surrounding blank lines."""
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


async def _pool(pg_admin_url: str) -> asyncpg.Pool:
    return await db.create_pool(await new_database(pg_admin_url), max_size=2)


async def _functions(conn, schema: str) -> dict[str, list[tuple[str, str]]]:
    """Per function name in ``schema``: (definition, body) of each overload."""
    rows = await conn.fetch(
        "SELECT p.proname, pg_get_functiondef(p.oid) AS def, p.prosrc FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1", schema)
    out: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        out.setdefault(r["proname"], []).append((_normalised(r["def"]), _normalised(r["prosrc"])))
    return out


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
async def test_migrating_twice_applies_each_file_once_and_every_function_is_its_canonical_file(
        pg_admin_url, schema):
    """A fresh database migrates (every migration and function file applied
    and checksummed), migrating again applies nothing, and each function in
    the schema is its canonical file: the body is the file's, and applying
    the file again would change nothing. A schema with a sql/ folder has no
    function without a file."""
    directory = SCHEMAS[schema]
    migrations = db.migration_files(directory)
    canonical = {f.name: f for f in db.function_files(directory.parent / "sql")}
    pool = await _pool(pg_admin_url)
    try:
        first = await db.migrate(pool, schema, directory)
        assert sorted(first) == sorted([m.name for m in migrations] + [f"sql/{n}" for n in canonical])
        assert await db.migrate(pool, schema, directory) == []
        async with pool.acquire() as conn:
            recorded = {r["version"]: r["checksum"] for r in await conn.fetch(
                f"SELECT version, checksum FROM {schema}.schema_migrations")}
            assert recorded == {m.version: m.checksum for m in migrations}
            recorded = {r["name"]: r["checksum"] for r in await conn.fetch(
                f"SELECT name, checksum FROM {schema}.schema_functions")}
            assert recorded == {n: f.checksum for n, f in canonical.items()}

            in_db = await _functions(conn, schema)
            if canonical:
                assert sorted(in_db) == sorted(canonical), "a function without a canonical file, or the reverse"
            for name, f in canonical.items():
                assert len(in_db[name]) == 1, f"{schema}.{name}: {len(in_db[name])} overloads"
                definition, body = in_db[name][0]
                assert body == _normalised(_BODY.search(f.sql).group(2)), f"{schema}.{name}: body differs from {f.path}"
                tx = conn.transaction()
                await tx.start()
                try:  # the file applied again, then rolled back
                    await conn.execute(f.sql)
                    again = await _functions(conn, schema)
                finally:
                    await tx.rollback()
                assert again[name] == [(definition, body)], f"{schema}.{name} differs from {f.path}"
    finally:
        await pool.close()


def _copy(tmp_path: Path, schema: str) -> Path:
    """A copy of a service's migrations/ and sql/ folders; its migrations/."""
    src = SCHEMAS[schema]
    shutil.copytree(src, tmp_path / "migrations")
    if (src.parent / "sql").is_dir():
        shutil.copytree(src.parent / "sql", tmp_path / "sql")
    return tmp_path / "migrations"


async def test_an_edited_applied_migration_fails_loudly_naming_the_file(pg_admin_url, tmp_path):
    """Once applied, a migration is history: edited, the next migrate raises
    ConfigError naming the file and applies nothing, not even a changed
    function file; a removed one fails too."""
    directory = _copy(tmp_path, "ledger")
    pool = await _pool(pg_admin_url)
    try:
        await db.migrate(pool, "ledger", directory)
        edited = directory / "001_ledger.sql"
        edited.write_text(edited.read_text() + "\n-- an innocent-looking comment\n")
        guard = tmp_path / "sql" / "forbid_change.sql"
        guard.write_text(guard.read_text().replace("rows are append-only", "rows never change"))
        with pytest.raises(ConfigError, match=re.escape(str(edited))):
            await db.migrate(pool, "ledger", directory)
        async with pool.acquire() as conn:
            assert "rows are append-only" in await conn.fetchval("SELECT prosrc FROM pg_proc WHERE proname = $1",
                                                                 "forbid_change")
        edited.unlink()
        with pytest.raises(ConfigError, match="001_ledger"):
            await db.migrate(pool, "ledger", directory)
    finally:
        await pool.close()


async def test_a_changed_function_file_is_reapplied_and_nothing_else(pg_admin_url, tmp_path):
    """Editing a canonical function file re-applies that file alone, in
    place (the triggers that call it keep calling it), and records its new
    checksum."""
    directory = _copy(tmp_path, "ledger")
    pool = await _pool(pg_admin_url)
    try:
        await db.migrate(pool, "ledger", directory)
        path = tmp_path / "sql" / "forbid_change.sql"
        path.write_text(path.read_text().replace("rows are append-only", "rows never change"))
        assert await db.migrate(pool, "ledger", directory) == ["sql/forbid_change"]
        assert await db.migrate(pool, "ledger", directory) == []
        async with pool.acquire() as conn:
            with pytest.raises(asyncpg.PostgresError, match="rows never change"):
                await conn.execute("TRUNCATE ledger.failed_transfers")
            assert await conn.fetchval("SELECT checksum FROM ledger.schema_functions WHERE name = 'forbid_change'") \
                == db.SqlFile.read(path).checksum
    finally:
        await pool.close()


async def test_concurrent_migrations_apply_each_file_once(pg_admin_url):
    """Two processes migrating one fresh database at once: one applies
    everything, the other waits for it and then finds nothing to do."""
    url = await new_database(pg_admin_url)
    pools = [await db.create_pool(url, max_size=1) for _ in range(2)]
    try:
        results = await asyncio.gather(*(db.migrate(p, "ledger", SCHEMAS["ledger"]) for p in pools))
        assert sorted(bool(r) for r in results) == [False, True]
    finally:
        for p in pools:
            await p.close()
