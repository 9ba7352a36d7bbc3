"""Limits on the admin money operations (top-ups and payouts): a cap per
call, per admin key per UTC day, and for all admin keys together per UTC day
(IDLEGRID_GATEWAY_{TOPUP,PAYOUT}_{CALL,KEY_DAY,DAY}_MAX_MICROS).

An operation goes through three steps:

1. :func:`reserve`, one transaction under a lock per action (so concurrent
   calls on any replica cannot pass a cap together): the caps are checked
   against today's operations that were not refused, the operation is
   written as pending, and the audit entry "started" with it. Over a cap:
   403 naming the cap, an audit entry "refused", and nothing else written.
2. The ledger is asked (by the route).
3. :func:`finish`, one transaction: the operation's status (applied or
   refused) and the audit entry of the outcome. When the ledger's answer is
   unknown (it failed or timed out) the operation stays pending, so it still
   counts against the caps.

A retry with the same idempotency key and body is not counted twice (the
ledger answers "already applied"); the same key with another account or
amount is refused with 409 here, as the ledger would, before it is asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from idlegrid.gateway import audit, store
from idlegrid.gateway.errors import ApiError
from idlegrid.gateway.settings import GatewaySettings

ACTIONS = ("topup", "payout")
_NAMES = {"topup": "top-up", "payout": "payout"}
_CAPS = (("call", "per call"), ("key_day", "per admin key per UTC day"), ("day", "for all admin keys per UTC day"))


@dataclass(frozen=True, slots=True, kw_only=True)
class MoneyOp:
    """One admin money operation, as asked."""

    action: str  # "topup" or "payout"
    key_id: str  # the admin key asking
    account_id: bytes
    amount_micros: int
    idempotency_key: str

    def audit(self, result: str, detail: str = "") -> dict:
        return {"actor": self.key_id, "action": self.action, "result": result, "account_id": self.account_id,
                "amount_micros": self.amount_micros, "idempotency_key": self.idempotency_key, "detail": detail}


def variable(action: str, cap: str) -> str:
    return f"IDLEGRID_GATEWAY_{action.upper()}_{cap.upper()}_MAX_MICROS"


def _over(op: MoneyOp, cap: str, label: str, limit: int, used: int) -> ApiError:
    name = _NAMES[op.action]
    already = f"; {used} already used today" if cap != "call" else ""
    return ApiError(403, f"this {name} of {op.amount_micros} micro-credits is over the limit of {limit} {label}"
                         f"{already} ({variable(op.action, cap)}); nothing was done",
                    code=f"{op.action}_{cap}_limit_exceeded", param="amount_micros")


def _busy() -> ApiError:
    return ApiError(503, "the gateway's database connections are all busy; try again", code="database_busy",
                    headers={"Retry-After": "1"})


async def _check(conn: asyncpg.Connection, op: MoneyOp, settings: GatewaySettings) -> ApiError | None:
    """The refusal of ``op``, or None when it may go to the ledger (written as pending)."""
    row = await store.money_row(conn, action=op.action, idempotency_key=op.idempotency_key)
    if row is not None and row.status != "refused":
        if (row.account_id, row.amount_micros) != (op.account_id, op.amount_micros):
            return ApiError(409, "this idempotency_key was used with other parameters", param="idempotency_key",
                            code="idempotency_key_reused")
        return None  # a retry: counted once already
    caps = dict(zip(("call", "key_day", "day"), settings.money_caps(op.action), strict=True))
    by_key, by_all = await store.money_used_today(conn, action=op.action, key_id=op.key_id)
    used = {"call": 0, "key_day": by_key, "day": by_all}
    for cap, label in _CAPS:
        if used[cap] + op.amount_micros > caps[cap]:
            return _over(op, cap, label, caps[cap], used[cap])
    await store.money_reserve(conn, action=op.action, idempotency_key=op.idempotency_key, key_id=op.key_id,
                              account_id=op.account_id, amount_micros=op.amount_micros)
    return None


async def reserve(pool: asyncpg.Pool, op: MoneyOp, settings: GatewaySettings) -> None:
    """Step 1: passes the caps and writes ``op`` as pending, or raises the
    refusal (403 over a cap, 409 an idempotency key reused)."""
    assert op.action in ACTIONS
    try:
        async with store.connection(pool, timeout_s=settings.db_acquire_timeout_s) as conn, conn.transaction():
            await store.money_lock(conn, op.action)
            refusal = await _check(conn, op, settings)
            await audit.record(conn, **op.audit("refused" if refusal else "started",
                                                refusal.code or "" if refusal else ""))
    except store.PoolBusy:
        raise _busy() from None
    if refusal is not None:
        raise refusal


async def finish(pool: asyncpg.Pool, op: MoneyOp, *, result: str, detail: str = "") -> None:
    """Step 3: records the ledger's answer: ``result`` "ok" or
    "already_applied" (applied), "refused" (nothing moved) or "failed"
    (unknown: stays pending)."""
    status = {"ok": "applied", "already_applied": "applied", "refused": "refused"}.get(result)
    async with pool.acquire() as conn, conn.transaction():
        if status is not None:
            await store.money_finish(conn, action=op.action, idempotency_key=op.idempotency_key, status=status)
        await audit.record(conn, **op.audit(result, detail))
