"""PostgreSQL: the database URL (or an embedded server), connection pools, and
per service schema its versioned migrations (schema only) and its canonical
function files, each checksummed."""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from idlegrid.common.config import Config
from idlegrid.common.errors import ConfigError

log = structlog.get_logger("db")

POOL_MIN = 1
COMMAND_TIMEOUT_S = 30.0
_MIGRATION_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
_FUNCTION_NAME = re.compile(r"^[a-z_][a-z0-9_]*\.sql$")
_SQL_COMMENT = re.compile(r"--[^\n]*")


def embedded_server(home: Path, *, cleanup_mode: str = "stop"):
    """Starts (or joins) the embedded PostgreSQL in ``home/pg``, recovering
    from a stale ``postmaster.pid`` left by a crash (common/embedded_pg.py).
    With "stop", the server stops when the last process that joined it exits."""
    from idlegrid.common import embedded_pg

    return embedded_pg.server(home, cleanup_mode=cleanup_mode)


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


@dataclass(frozen=True, slots=True)
class SqlFile:
    """A migration (``NNN_name.sql``, ``version`` NNN) or a canonical function
    file (``<function>.sql``, version 0), read once, with its sha256."""

    path: Path
    name: str
    sql: str
    checksum: str
    version: int = 0

    @classmethod
    def read(cls, path: Path, version: int = 0) -> SqlFile:
        data = path.read_bytes()
        return cls(path, path.stem, data.decode(), hashlib.sha256(data).hexdigest(), version)

    def calls(self, schema: str, function: str) -> bool:
        """Whether this file (comments aside) calls ``schema.function(``."""
        return re.search(rf"\b{schema}\.{function}\s*\(", _SQL_COMMENT.sub("", self.sql)) is not None


def migration_files(directory: Path) -> list[SqlFile]:
    """The versioned migrations in ``directory``, in version order."""
    found = []
    for path in sorted(directory.iterdir()):
        m = _MIGRATION_NAME.match(path.name)
        if m:
            found.append(SqlFile.read(path, int(m.group(1))))
    versions = [f.version for f in found]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"duplicate migration versions in {directory}")
    return found


def function_files(directory: Path) -> list[SqlFile]:
    """The canonical function files in ``directory`` (none if it is absent):
    ``<name>.sql`` holds ``CREATE OR REPLACE FUNCTION <schema>.<name>``."""
    if not directory.is_dir():
        return []
    found = sorted(p for p in directory.iterdir() if p.suffix == ".sql")
    for path in found:
        if not _FUNCTION_NAME.match(path.name):
            raise ConfigError(f"bad function file name {path} (want <function_name>.sql)")
    return [SqlFile.read(p) for p in found]


async def _bookkeeping(conn, schema: str) -> None:
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    # Databases migrated before checksums were kept get the column here.
    await conn.execute(f"ALTER TABLE {schema}.schema_migrations ADD COLUMN IF NOT EXISTS checksum text")
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.schema_functions ("
        " name text PRIMARY KEY, checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )


async def _pending(conn, schema: str, files: list[SqlFile]) -> list[SqlFile]:
    """The migrations not yet applied. Fails loudly when an applied one was
    changed or removed: history is fixed once applied; add a new migration."""
    by_version = {f.version: f for f in files}
    applied = await conn.fetch(f"SELECT version, name, checksum FROM {schema}.schema_migrations ORDER BY version")
    for r in applied:
        f = by_version.get(r["version"])
        if f is None:
            raise ConfigError(
                f"{schema}: migration {r['name']} is applied but its file is gone (squashed or deleted):"
                " this database predates the code; recreate it")
        if r["checksum"] is None:  # applied before checksums were kept: trusted once
            await conn.execute(f"UPDATE {schema}.schema_migrations SET checksum = $2 WHERE version = $1",
                               f.version, f.checksum)
        elif r["checksum"] != f.checksum:
            raise ConfigError(
                f"{schema}: migration {f.path} changed after it was applied (sha256 {r['checksum'][:12]}"
                f" in the database, {f.checksum[:12]} on disk): never edit an applied migration; add a new one")
    done = {r["version"] for r in applied}
    return [f for f in files if f.version not in done]


async def _apply_function(conn, schema: str, f: SqlFile) -> None:
    await conn.execute(f.sql)
    await conn.execute(
        f"INSERT INTO {schema}.schema_functions (name, checksum) VALUES ($1, $2)"
        " ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()",
        f.name, f.checksum)


async def migrate(pool: asyncpg.Pool, schema: str, directory: Path) -> list[str]:
    """Brings ``schema`` up to date, in one transaction under an advisory lock:
    safe to run twice, or from two processes at once. Returns the names of the
    migrations and function files applied.

    - ``directory`` holds the versioned migrations, ``NNN_name.sql``: schema
      only (tables, columns, indexes, types). Each is applied once, in order;
      its sha256 is stored, and a ConfigError names any applied migration whose
      file changed or disappeared since.
    - ``directory/../sql`` (optional) holds one canonical file per SQL function,
      ``<name>.sql``, a ``CREATE OR REPLACE FUNCTION <schema>.<name>``. A file
      is (re-)applied whenever its sha256 differs from the one stored. A file
      that a pending migration calls (a trigger's function) is applied just
      before that migration; the others after every migration (they may use
      the types the migrations create). A function whose signature changes
      leaves its old overload behind: drop it in a migration.
    """
    if not re.fullmatch(r"[a-z_]+", schema):
        raise ConfigError(f"bad schema name {schema!r}")
    migrations = migration_files(directory)
    functions = function_files(directory.parent / "sql")
    applied: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"idlegrid.migrate.{schema}")
        await _bookkeeping(conn, schema)
        stored = {r["name"]: r["checksum"]
                  for r in await conn.fetch(f"SELECT name, checksum FROM {schema}.schema_functions")}
        changed = {f.name: f for f in functions if stored.get(f.name) != f.checksum}
        for m in await _pending(conn, schema, migrations):
            for name in [name for name in changed if m.calls(schema, name)]:
                await _apply_function(conn, schema, changed.pop(name))
                applied.append(f"sql/{name}")
            await conn.execute(m.sql)
            await conn.execute(
                f"INSERT INTO {schema}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version, m.name, m.checksum)
            applied.append(m.name)
        for f in changed.values():
            await _apply_function(conn, schema, f)
            applied.append(f"sql/{f.name}")
    if applied:
        log.info("db.migrated", schema=schema, applied=applied)
    return applied


# -- service roles (least privilege): one login role per schema, DML only ---

ROLE_PREFIX = "idlegrid_"


def role_name(schema: str) -> str:
    """The database role of the service that owns ``schema``."""
    if not re.fullmatch(r"[a-z_]+", schema):
        raise ConfigError(f"bad schema name {schema!r}")
    return f"{ROLE_PREFIX}{schema}"


def role_url(url: str, schema: str, password: str | None = None) -> str:
    """``url`` with the user (and password) of ``schema``'s role."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    auth = role_name(schema) + (f":{quote(password, safe='')}" if password else "")
    return urlunsplit((parts.scheme, f"{auth}@{host}{port}", parts.path, parts.query, parts.fragment))


async def grant_service_role(conn, schema: str, *, password: str | None = None) -> str:
    """Creates (or updates) ``schema``'s role: it may log in, use its own
    schema, read and write its tables, use its sequences and run its
    functions; it owns nothing, so it can run no DDL, and no other role but
    the owner may use the schema. Idempotent; run by ``idlegrid migrate``
    after the migrations, so new tables and functions are granted too."""
    role = role_name(schema)
    secret = "" if password is None else " PASSWORD " + _literal(password)
    try:  # roles belong to the whole server: another database's migrate may make it first
        await conn.execute(f"CREATE ROLE {role}")
    except (asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
        pass
    async with conn.transaction():
        await conn.execute(f"ALTER ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT{secret}")
        await conn.execute(f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC")
        await conn.execute(f"REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} FROM PUBLIC")
        await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        await conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}")
        await conn.execute(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}")
        await conn.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {role}")
        # The migrations' bookkeeping is the migrator's alone.
        for table in ("schema_migrations", "schema_functions"):
            await conn.execute(f"REVOKE INSERT, UPDATE, DELETE ON {schema}.{table} FROM {role}")
    return role


def _literal(text: str) -> str:
    if "\x00" in text:
        raise ConfigError("a role password cannot contain NUL")
    return "'" + text.replace("'", "''") + "'"
