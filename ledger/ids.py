"""Deterministic 16-byte ids: well-known accounts and the transfers of the
marketplace operations, so that every operation is idempotent by its key."""

from __future__ import annotations

import hashlib

from idlegrid.ledger.codes import LEDGER_CREDITS


def derive(*parts: bytes | str | int) -> bytes:
    h = hashlib.sha256(b"idlegrid")
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        h.update(len(b).to_bytes(4, "big"))
        h.update(b)
    return h.digest()[:16]


def well_known_account(name: str, ledger: int) -> bytes:
    return derive("account", name, ledger)


def expiry_void_id(pending_id: bytes) -> bytes:
    """The id of the void with which the expiry sweep ends a pending transfer."""
    return hashlib.sha256(b"idlegrid/expire/" + pending_id).digest()[:16]


# The marketplace's own accounts on the credits ledger, named once.
ESCROW = well_known_account("escrow:jobs", LEDGER_CREDITS)
REVENUE = well_known_account("platform:revenue", LEDGER_CREDITS)
