"""Service-to-service authentication: who is calling. The RPC policy
(idlegrid.common.interceptors) asks a guard for the caller's identity, then
checks it against the table in idlegrid.common.identities.

- ``TokenGuard`` (one machine): each identity has its own token, presented
  as ``authorization: Bearer <token>``; the guard knows the tokens of the
  identities its server accepts. An empty, short or unknown token is no one.
- ``CertGuard`` (production, mTLS): the identity is the verified client
  certificate's SPIFFE id (``spiffe://idlegrid/<identity>``, a URI SAN) or,
  without one, its subject CN.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

from idlegrid.common.identities import IDENTITIES

AUTH_KEY = "authorization"
TOKEN_CHARS_MIN = 8  # shorter (empty above all) is a mistake, never a credential; generated ones are 43
SPIFFE_PREFIX = "spiffe://idlegrid/"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return ((AUTH_KEY, f"Bearer {token}"),)


def check_token(name: str, token: str) -> str:
    """``token`` if usable as a credential; ValueError naming ``name`` if not."""
    if len(token) < TOKEN_CHARS_MIN or token != token.strip():
        raise ValueError(f"{name}: a token must be at least {TOKEN_CHARS_MIN} characters, without spaces around")
    return token


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenGuard:
    """Identities by token. Lookups go by SHA-256 digest, so a timing
    difference tells nothing about a token's prefix."""

    def __init__(self, tokens: Mapping[str, str], *, only: Iterable[str] | None = None) -> None:
        """``tokens``: identity -> its token (each checked with check_token).
        ``only``: the identities accepted (default: all of ``tokens``)."""
        accepted = set(tokens) if only is None else set(only) & set(tokens)
        self._by_digest = {_digest(check_token(i, tokens[i])): i for i in accepted}
        if len(self._by_digest) != len(accepted):
            raise ValueError("two identities share a token")
        self._tokens = dict(tokens)

    def only(self, identities: Iterable[str]) -> TokenGuard:
        """The same tokens, accepting only ``identities``."""
        return TokenGuard(self._tokens, only=identities)

    def identity_of(self, metadata_value: str | None) -> str | None:
        if not metadata_value or not metadata_value.startswith("Bearer "):
            return None
        token = metadata_value[7:]
        if len(token) < TOKEN_CHARS_MIN:
            return None
        return self._by_digest.get(_digest(token))

    def identify(self, authorization: str | None, context) -> str | None:  # noqa: ARG002 - one shape for guards
        return self.identity_of(authorization)


def identity_in_cert(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The idlegrid identity of a verified TLS peer (grpc's auth_context):
    its ``spiffe://idlegrid/<identity>`` URI SAN, else its subject CN; None
    when the peer showed no certificate or names no known identity."""
    if b"ssl" not in set(auth_context.get("transport_security_type", ())):
        return None
    names = [v.decode(errors="replace") for v in auth_context.get("peer_spiffe_id", ())]
    names += [v.decode(errors="replace") for v in auth_context.get("x509_subject_alternative_name", ())]
    for name in names:
        if name.startswith(SPIFFE_PREFIX):
            identity = name[len(SPIFFE_PREFIX):]
            return identity if identity in IDENTITIES else None
    cns = [v.decode(errors="replace") for v in auth_context.get("x509_common_name", ())]
    if len(cns) == 1 and cns[0] in IDENTITIES:
        return cns[0]
    return None


class CertGuard:
    """Identities by verified client certificate (the server requires and
    verifies client certificates against the cluster's CA)."""

    def identify(self, authorization: str | None, context) -> str | None:  # noqa: ARG002
        return identity_in_cert(context.auth_context())


def token_matches(metadata_value: str | None, expected: str | TokenGuard) -> bool:
    """Whether ``metadata_value`` (an ``authorization`` value) carries
    ``expected``: one token, or any identity a TokenGuard accepts. An empty
    or short token never matches."""
    if isinstance(expected, TokenGuard):
        return expected.identity_of(metadata_value) is not None
    if not isinstance(expected, str):  # a guard that needs the connection (mTLS): not from metadata
        return False
    if not metadata_value or not metadata_value.startswith("Bearer ") or len(expected) < TOKEN_CHARS_MIN:
        return False
    return hmac.compare_digest(metadata_value[7:].encode(), expected.encode())
