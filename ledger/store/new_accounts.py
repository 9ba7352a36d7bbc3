"""Account creation: one transaction for a request's accounts, each inserted
unless its id (or its name on its ledger) is taken."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from idlegrid.ledger.store.uuids import U, b_opt, u_opt
from idlegrid.ledger.values import Account


@dataclass(frozen=True, slots=True)
class Taken:
    """An account that was not inserted: ``existing`` holds the account with
    its id, or is None when the id was free but the name was taken."""

    existing: Account | None


async def insert_accounts(pool: asyncpg.Pool, accounts: list[Account]) -> list[Taken | None]:
    """Inserts each account (balances zero); per account, None when inserted."""
    out: list[Taken | None] = []
    async with pool.acquire() as conn, conn.transaction():
        for a in accounts:
            row = await conn.fetchrow(
                """INSERT INTO ledger.accounts (id, ledger, kind, flags, user_data, name)
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING id""",
                U(a.id), a.ledger, a.kind, a.flags, u_opt(a.user_data), a.name or None)
            if row is not None:
                out.append(None)
                continue
            old = await conn.fetchrow(
                "SELECT ledger, kind, flags, user_data, name FROM ledger.accounts WHERE id = $1", U(a.id))
            out.append(Taken(None if old is None else Account(
                id=a.id, ledger=old["ledger"], kind=old["kind"], flags=old["flags"],
                user_data=b_opt(old["user_data"]), name=old["name"] or "")))
    return out
