"""``idlegrid ledger serve | verify | balance``."""

from __future__ import annotations

import argparse
import sys
import uuid

from idlegrid.common import db
from idlegrid.common.config import Config
from idlegrid.ledger.codes import LEDGER_CREDITS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ledger", help="the credit ledger")
    lsub = p.add_subparsers(dest="ledger_command", required=True)
    s = lsub.add_parser("serve", help="run the ledger gRPC service")
    s.set_defaults(func=_serve)
    v = lsub.add_parser("verify", help="prove the books: hash chain, balances, invariants")
    v.set_defaults(func=_verify)
    b = lsub.add_parser("balance", help="show an account's balances")
    b.add_argument("account", help="account id (UUID) or name, e.g. escrow:jobs")
    b.set_defaults(func=_balance)


async def _serve(args, config: Config) -> int:
    from idlegrid.ledger.service import serve

    await serve(config)
    return 0


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


async def _verify(args, config: Config) -> int:
    import asyncpg

    from idlegrid.ledger.audit import verify

    conn = await asyncpg.connect(await db.resolve_url(config))
    try:
        rep = await verify(conn)
    finally:
        await conn.close()
    if rep.ok:
        out(f"ledger verify: OK ({rep.batches} batches, {rep.transfers} transfers, {rep.accounts} accounts; "
            "hash chain intact, balances recomputed, debits = credits)")
        return 0
    out(f"ledger verify: FAILED with {len(rep.problems)} problem(s) "
        f"({rep.batches} batches, {rep.transfers} transfers, {rep.accounts} accounts):")
    for p in rep.problems:
        out(f"  - {p}")
    return 1


async def _balance(args, config: Config) -> int:
    import asyncpg

    from idlegrid.ledger.store import reads

    conn = await asyncpg.connect(await db.resolve_url(config))
    try:
        try:
            key = uuid.UUID(args.account)
            acct = (await reads.accounts_by_id(conn, [key.bytes])).get(key.bytes)
        except ValueError:
            acct = await reads.account_by_name(conn, args.account, LEDGER_CREDITS)
    finally:
        await conn.close()
    if acct is None:
        out(f"no account {args.account!r}")
        return 1
    out(f"account {uuid.UUID(bytes=acct.id)} {acct.name} (ledger {acct.ledger}, kind {acct.kind}, "
        f"flags {acct.flags})")
    for k in ("debits_pending", "debits_posted", "credits_pending", "credits_posted"):
        out(f"  {k:16} {getattr(acct, k):>20}")
    out(f"  {'available':16} {acct.credits_posted - acct.debits_posted - acct.debits_pending:>20}")
    return 0
