"""Provider and node tokens.

A token names its principal and carries 256 random bits:
``igp_<provider id hex>_<secret>`` or ``ign_<node id hex>_<secret>``. The
registry stores only ``sha256(token)`` and compares digests in constant time,
so a stolen database reveals no usable token and a lookup never scans.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

from idlegrid.common.auth import AUTH_KEY

PROVIDER = "igp"
NODE = "ign"
TOKEN_CHARS_MAX = 128
_SHAPE = re.compile(r"^(igp|ign)_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$")


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def mint(kind: str, principal_id: bytes) -> tuple[str, bytes]:
    """A new token for ``principal_id`` and its digest (the only part kept)."""
    assert kind in (PROVIDER, NODE) and len(principal_id) == 16
    token = f"{kind}_{principal_id.hex()}_{secrets.token_urlsafe(32)}"
    return token, digest(token)


def parse(token: str) -> tuple[str, bytes] | None:
    """(kind, principal id) of a well-formed token, else None."""
    if len(token) > TOKEN_CHARS_MAX:
        return None
    m = _SHAPE.match(token)
    if m is None:
        return None
    return m.group(1), bytes.fromhex(m.group(2))


def matches(token: str, stored: bytes | None) -> bool:
    """Constant-time comparison of ``token`` with a stored digest."""
    if stored is None:
        return False
    return hmac.compare_digest(digest(token), stored)


def from_metadata(metadata: Iterable[tuple[str, str]] | None) -> str | None:
    """The bearer token in gRPC metadata, if any."""
    for key, value in metadata or ():
        if key == AUTH_KEY:
            return value[7:] if value.startswith("Bearer ") else ""
    return None
