"""``idlegrid gateway serve | create-admin-key``.

The bootstrap admin key never goes to a log stream: ``create-admin-key``
writes it to a new file readable by its owner only (``--out FILE``, mode
0600, never over an existing file), or to standard output when that is a
terminal or ``--stdout`` says so explicitly. Anything else is refused before
a key is made. The key is audited (actor "cli"); it expires like every admin
key (IDLEGRID_GATEWAY_ADMIN_KEY_TTL_S, or ``--expires-in-s``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from idlegrid.common.config import Config
from idlegrid.common.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="the REST gateway (OpenAI-compatible, KServe v2, accounts, keys)")
    gsub = p.add_subparsers(dest="gateway_command", required=True)
    s = gsub.add_parser("serve", help="run the gateway (settings: IDLEGRID_GATEWAY_* variables)")
    s.set_defaults(func=_serve)
    k = gsub.add_parser("create-admin-key", help="create an admin API key (shown once): into --out FILE (0600), "
                                                 "or on stdout when it is a terminal or with --stdout")
    k.add_argument("--out", type=Path, help="write the key to this new file, readable by its owner only")
    k.add_argument("--stdout", action="store_true", help="print the key on stdout even when it is not a terminal")
    k.add_argument("--expires-in-s", type=int, default=None,
                   help="life of the key in seconds (default and most: IDLEGRID_GATEWAY_ADMIN_KEY_TTL_S)")
    k.set_defaults(func=_create_admin_key)


async def _serve(args, config: Config) -> int:
    from idlegrid.gateway.service import serve
    from idlegrid.gateway.settings import GatewaySettings

    await serve(config, GatewaySettings.from_env())
    return 0


def _open_secret_file(path: Path) -> int:
    """A new file, mode 0600 from its first byte; never an existing one."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; choose a new file (the key is written only to a new one)") from None
    except OSError as e:
        raise ConfigError(f"cannot create {path}: {e.strerror}") from None


def check_destination(args) -> None:
    """Refuses, before any key is made, an output that could reach a log."""
    if args.out is not None and args.stdout:
        raise ConfigError("give --out FILE or --stdout, not both")
    if args.out is None and not args.stdout and not sys.stdout.isatty():
        raise ConfigError("stdout is not a terminal, so the key could end up in a log: write it to a file with "
                          "--out FILE (created 0600), or pass --stdout to print it anyway")


async def _create_admin_key(args, config: Config) -> int:
    from idlegrid.common import db
    from idlegrid.gateway import audit, keys
    from idlegrid.gateway.service import MIGRATIONS
    from idlegrid.gateway.settings import GatewaySettings

    check_destination(args)
    ttl_max = GatewaySettings.from_env().admin_key_ttl_s
    ttl = ttl_max if args.expires_in_s is None else args.expires_in_s
    if not 1 <= ttl <= ttl_max:
        raise ConfigError(f"--expires-in-s must be in [1, {ttl_max}] (IDLEGRID_GATEWAY_ADMIN_KEY_TTL_S)")
    fd = _open_secret_file(args.out) if args.out is not None else None
    written = False
    try:
        url = await db.resolve_url(config)
        pool = await db.create_pool(url, max_size=1)
        try:
            await db.migrate(pool, "gateway", MIGRATIONS)
            async with pool.acquire() as conn, conn.transaction():
                made = await keys.issue(conn, scope="admin", expires_in_s=ttl)
                await audit.record(conn, actor=audit.CLI_ACTOR, action="create_key", result="ok",
                                   target_key_id=made.key_id, detail="scope admin (create-admin-key)")
        finally:
            await pool.close()
        expires = made.expires_at.isoformat() if made.expires_at else "never"
        if fd is not None:
            os.write(fd, f"{made.key}\n".encode())
            written = True
            sys.stderr.write(f"admin key {made.key_id} written to {args.out} (expires {expires})\n")
        else:
            sys.stderr.write(f"admin key {made.key_id} (shown once, keep it secret; expires {expires}):\n")
            sys.stdout.write(f"{made.key}\n")
            sys.stdout.flush()
    finally:
        if fd is not None:
            os.close(fd)
            if not written:  # no key in it: leave nothing behind
                with contextlib.suppress(OSError):
                    args.out.unlink()
    return 0
