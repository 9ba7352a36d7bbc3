"""``idlegrid migrate``: applies every service's database migrations, then
creates or updates each service's database role (idlegrid_<schema>: DML on
its own schema only) and exits. The migrations Job in Kubernetes, the only
place DDL runs in production; on one machine services also migrate at start
(IDLEGRID_MIGRATE_ON_START)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from idlegrid.common import db
from idlegrid.common.config import Config

# Each service that owns a schema keeps its migrations in its package's
# ``migrations/`` folder; the schema is named after the service.
SCHEMAS = ("ledger", "registry", "metering", "gateway")


def migrations_dir(schema: str) -> Path:
    return Path(str(resources.files(f"idlegrid.{schema}").joinpath("migrations")))


def register(sub) -> None:
    p = sub.add_parser("migrate", help="apply every service's database migrations, then exit")
    p.set_defaults(func=_migrate)


async def migrate_all(url: str, *, roles: bool = True,
                      passwords: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Migrates every schema; with ``roles``, then grants each service's role
    (``passwords``: schema -> the role's password to set)."""
    passwords = passwords or {}
    pool = await db.create_pool(url, max_size=2)
    try:
        applied = {schema: await db.migrate(pool, schema, migrations_dir(schema)) for schema in SCHEMAS}
        if roles:
            async with pool.acquire() as conn:
                for schema in SCHEMAS:
                    await db.grant_service_role(conn, schema, password=passwords.get(schema))
        return applied
    finally:
        await pool.close()


async def _migrate(args, config: Config) -> int:
    applied = await migrate_all(await db.resolve_url(config), passwords=config.db_role_passwords)
    for schema, names in applied.items():
        sys.stdout.write(f"{schema}: {', '.join(names) if names else 'up to date'}; role {db.role_name(schema)}\n")
    return 0
