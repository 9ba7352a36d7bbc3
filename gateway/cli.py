"""``idlegrid gateway serve | create-admin-key``."""

from __future__ import annotations

import argparse
import sys

from idlegrid.common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="the REST gateway (OpenAI-compatible, KServe v2, accounts, keys)")
    gsub = p.add_subparsers(dest="gateway_command", required=True)
    s = gsub.add_parser("serve", help="run the gateway (settings: IDLEGRID_GATEWAY_* variables)")
    s.set_defaults(func=_serve)
    k = gsub.add_parser("create-admin-key", help="create an admin API key and print it (shown once)")
    k.set_defaults(func=_create_admin_key)


async def _serve(args, config: Config) -> int:
    from idlegrid.gateway.service import serve
    from idlegrid.gateway.settings import GatewaySettings

    await serve(config, GatewaySettings.from_env())
    return 0


async def _create_admin_key(args, config: Config) -> int:
    from idlegrid.common import db
    from idlegrid.gateway.keys import create_key
    from idlegrid.gateway.service import MIGRATIONS

    url = await db.resolve_url(config)
    pool = await db.create_pool(url, max_size=1)
    try:
        await db.migrate(pool, "gateway", MIGRATIONS)
        key_id, key = await create_key(pool, scope="admin")
    finally:
        await pool.close()
    sys.stdout.write(f"admin key {key_id} (shown once, keep it secret):\n{key}\n")
    return 0
