"""``idlegrid migrate``: applies every service's database migrations and
exits (the migrations Job in Kubernetes; services also migrate at start-up)."""

from __future__ import annotations

import sys
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


async def migrate_all(url: str) -> dict[str, list[str]]:
    pool = await db.create_pool(url, max_size=2)
    try:
        return {schema: await db.migrate(pool, schema, migrations_dir(schema)) for schema in SCHEMAS}
    finally:
        await pool.close()


async def _migrate(args, config: Config) -> int:
    applied = await migrate_all(await db.resolve_url(config))
    for schema, names in applied.items():
        sys.stdout.write(f"{schema}: {', '.join(names) if names else 'up to date'}\n")
    return 0
