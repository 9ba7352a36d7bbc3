"""``idlegrid migrate``: applies every service's database migrations and
exits (the migrations Job in Kubernetes; services also migrate at start-up)."""

from __future__ import annotations

import sys
from pathlib import Path

from services.common import db
from services.common.config import Config

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = {
    "ledger": ROOT / "ledger" / "migrations",
    "registry": ROOT / "services" / "registry" / "migrations",
    "metering": ROOT / "services" / "metering" / "migrations",
    "gateway": ROOT / "gateway" / "migrations",
}


def register(sub) -> None:
    p = sub.add_parser("migrate", help="apply every service's database migrations, then exit")
    p.set_defaults(func=_migrate)


async def migrate_all(url: str) -> dict[str, list[str]]:
    pool = await db.create_pool(url, max_size=2)
    try:
        return {schema: await db.migrate(pool, schema, path)
                for schema, path in SCHEMAS.items() if path.is_dir()}
    finally:
        await pool.close()


async def _migrate(args, config: Config) -> int:
    applied = await migrate_all(await db.resolve_url(config))
    for schema, names in applied.items():
        sys.stdout.write(f"{schema}: {', '.join(names) if names else 'up to date'}\n")
    return 0
