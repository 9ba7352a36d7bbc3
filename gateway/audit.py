"""The audit trail of keys and admin actions (table gateway.audit,
append-only: a trigger refuses every change and deletion).

Each entry says who (``actor``: the admin key's id, or "cli" for a key made
by ``idlegrid gateway create-admin-key``), when (the database's clock), what
(the action, its target account or key, the amount and idempotency key of a
money operation) and the result. An entry is written in the transaction of
the action's own record where that record is in the gateway's database (a
key made or revoked, a money operation reserved or finished); an account
spans the ledger and the registry, so its entry follows the creation.
Entries never hold a key or a secret. Admins read them with GET
/v1/admin/audit, newest first.

| action | result |
|---|---|
| create_account | ok, refused (with the error code) |
| create_key | ok |
| revoke_key | ok |
| topup, payout | started (caps passed, the ledger is asked), then ok, already_applied, refused (a cap or the ledger's answer) or failed (outcome unknown: it still counts against the caps) |
| the operator controls (gateway/operator_routes.py: OPERATOR_ACTIONS) | ok, or refused (with the error code); the registry keeps its own trail of them too |
"""

from __future__ import annotations

from idlegrid.gateway import store, views
from idlegrid.gateway.store import AuditEntry, Db

CLI_ACTOR = "cli"
OPERATOR_ACTIONS = ("put_catalog_model", "remove_catalog_model", "suspend_node", "unsuspend_node", "suspend_provider",
                    "unsuspend_provider", "trust_provider", "untrust_provider", "rotate_provider_token",
                    "revoke_provider_token", "ban_endpoint", "unban_endpoint")
ACTIONS = ("create_account", "create_key", "revoke_key", "topup", "payout", *OPERATOR_ACTIONS)
RESULTS = ("started", "ok", "already_applied", "refused", "failed")
DETAIL_CHARS_MAX = 500


async def record(db: Db, *, actor: str, action: str, result: str, account_id: bytes | None = None,
                 target_key_id: str | None = None, amount_micros: int | None = None,
                 idempotency_key: str | None = None, detail: str = "") -> int:
    """Appends one entry; returns its sequence number."""
    assert action in ACTIONS and result in RESULTS, (action, result)
    return await store.insert_audit(db, AuditEntry(
        actor=actor, action=action, result=result, account_id=account_id, target_key_id=target_key_id,
        amount_micros=amount_micros, idempotency_key=idempotency_key, detail=detail[:DETAIL_CHARS_MAX]))


async def page(db: Db, *, before_seq: int | None, limit: int) -> list[AuditEntry]:
    return await store.list_audit(db, before_seq=before_seq, limit=limit)


def view(e: AuditEntry) -> dict:
    """The JSON of one entry."""
    return {"object": "audit_entry", "seq": e.seq, "at": views.timestamp(e.at), "actor": e.actor, "action": e.action,
            "result": e.result, "account_id": views.uid(e.account_id) if e.account_id else None,
            "key_id": e.target_key_id, "amount_micros": e.amount_micros, "idempotency_key": e.idempotency_key,
            "detail": e.detail}
