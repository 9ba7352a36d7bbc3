"""``idlegrid ledger serve | verify | balance``."""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

from idlegrid.common import db
from idlegrid.common.config import Config
from idlegrid.ledger.codes import LEDGER_CREDITS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ledger", help="the credit ledger")
    lsub = p.add_subparsers(dest="ledger_command", required=True)
    s = lsub.add_parser("serve", help="run the ledger gRPC service")
    s.set_defaults(func=_serve)
    v = lsub.add_parser("verify", help="prove the books: hash chain, signed checkpoints, balances, invariants")
    v.add_argument("--public-key", action="append", type=Path, metavar="PEM",
                   help="a public key the checkpoints may be signed with (repeatable; default "
                        "IDLEGRID_LEDGER_CHECKPOINT_PUBLIC_KEY, else $IDLEGRID_HOME/ledger-checkpoint.pub)")
    v.add_argument("--checkpoint-log", type=Path, metavar="PATH",
                   help="the checkpoint log (default IDLEGRID_LEDGER_CHECKPOINT_LOG, else "
                        "$IDLEGRID_HOME/ledger-checkpoints.jsonl)")
    v.add_argument("--require-checkpoints", action="store_true",
                   help="fail when no public key is found (as IDLEGRID_LEDGER_CHECKPOINTS=required)")
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

    from idlegrid.ledger import checkpoint_audit
    from idlegrid.ledger.audit import verify
    from idlegrid.ledger.checkpoint_settings import CheckpointSettings

    overrides: dict = {}
    if args.public_key:
        overrides["public_keys"] = tuple(args.public_key)
    if args.checkpoint_log:
        overrides["log"] = args.checkpoint_log
    if args.require_checkpoints:
        overrides["mode"] = "required"
    settings = CheckpointSettings.from_env(home=config.home, embedded=config.database_url is None, **overrides)
    anchors = checkpoint_audit.load(settings)  # before the snapshot: the log only grows
    conn = await asyncpg.connect(await db.resolve_url(config))
    try:
        rep = await verify(conn, anchors=anchors)
    finally:
        await conn.close()
    if rep.checkpoints is None:
        anchored = ("signed checkpoints NOT checked (no public key): a rewrite by someone holding the database "
                    "credential would pass")
    else:
        anchored = f"{rep.checkpoints} signed checkpoints in {settings.log_path}"
    if rep.ok:
        out(f"ledger verify: OK ({rep.batches} batches, {rep.transfers} transfers, {rep.accounts} accounts; "
            f"hash chain intact, balances recomputed, debits = credits; {anchored})")
        return 0
    out(f"ledger verify: FAILED with {len(rep.problems)} problem(s) "
        f"({rep.batches} batches, {rep.transfers} transfers, {rep.accounts} accounts; {anchored}):")
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
