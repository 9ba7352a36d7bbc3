"""Service-to-service authentication: a shared token in the ``authorization``
metadata (``Bearer <token>``), compared in constant time. Works the same over
plaintext (one machine) and TLS (production)."""

from __future__ import annotations

import hmac

AUTH_KEY = "authorization"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return ((AUTH_KEY, f"Bearer {token}"),)


def token_matches(metadata_value: str | None, expected: str) -> bool:
    if not metadata_value or not metadata_value.startswith("Bearer "):
        return False
    return hmac.compare_digest(metadata_value[7:].encode(), expected.encode())
