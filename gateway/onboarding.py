"""Onboarding: creating a consumer or provider account across the ledger
and the registry without leaving half of one behind, finding it again, and
reading its ledger account back.

A creation is idempotent by (kind, name): the ledger account id is derived
from them, so a retry after a failure part-way finds the same ledger account
and carries on. The row in ``gateway.accounts`` is written last, as the
commit point; until it exists no key can be made for the account.

| step | on failure |
|---|---|
| 1. the name is free in gateway.accounts | 409, nothing written |
| 2. ledger account ``<kind>:<name>`` (id derived from kind and name) | 409 if the ledger name is taken otherwise; nothing else written |
| 3. provider only: registry CreateProvider | 409 if the registry name is taken; a retry after any other failure resumes here |
| 4. the gateway.accounts row | 409 if a concurrent creation won |

Keys are made only for accounts with that row. A ledger account left by a
creation refused at step 3 stays empty and unusable (ledger accounts are
immutable by design; there is no delete).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

from idlegrid.gateway import store
from idlegrid.gateway.backends import Backends
from idlegrid.gateway.errors import ApiError, bad_request, rpc
from idlegrid.gateway.store import Db
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.registry.v1 import registry_pb2 as rpb

NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,100}$")
KINDS = {"consumer": lpb.ACCOUNT_KIND_CONSUMER, "provider": lpb.ACCOUNT_KIND_PROVIDER}
_A = lpb.CreateAccountResult


@dataclass(frozen=True, slots=True)
class CreatedAccount:
    account_id: bytes
    kind: str
    name: str
    provider_id: bytes | None
    provider_token: str | None  # shown once, only when the provider was created now


def account_id_for(kind: str, name: str) -> bytes:
    h = hashlib.sha256(f"idlegrid.gateway.account\x00{kind}\x00{name}".encode()).digest()
    return uuid.UUID(bytes=h[:16], version=4).bytes


async def lookup(backends: Backends, account_id: bytes, *, timeout_s: float, metadata=()) -> lpb.Account:
    r = await rpc(backends.ledger.LookupAccounts(lpb.LookupAccountsRequest(ids=[account_id]), timeout=timeout_s,
                                                 metadata=metadata))
    if not r.accounts:
        raise ApiError(404, f"no account {uuid.UUID(bytes=account_id)}", param="account_id",
                       code="account_not_found")
    return r.accounts[0]


async def provider_of(db: Db, account_id: bytes) -> bytes | None:
    """The registry provider created with this provider account, if any."""
    row = await store.account_by_id(db, account_id)
    return row.provider_id if row is not None else None


async def created_kind(db: Db, account_id: bytes) -> str | None:
    """The kind of an account created through the gateway (None: there is none)."""
    row = await store.account_by_id(db, account_id)
    return row.kind if row is not None else None


def check(kind: object, name: object) -> tuple[str, str]:
    if not isinstance(kind, str) or kind not in KINDS:  # a JSON object or list is unhashable
        raise bad_request("'kind' must be consumer or provider", param="kind")
    if not isinstance(name, str) or not NAME.match(name):
        raise bad_request("'name' must be 1..100 characters of [A-Za-z0-9_.@+-]", param="name")
    return kind, name  # type: ignore[return-value]


async def create_account(db: Db, backends: Backends, *, kind: str, name: str, timeout_s: float = 10.0,
                         metadata=()) -> CreatedAccount:
    """Creates a consumer or a provider (ledger account, and for a provider
    its registry provider and token). 409 when the name is taken."""
    kind, name = check(kind, name)
    if await store.account_exists(db, kind=kind, name=name):
        raise ApiError(409, f"a {kind} named {name!r} exists", param="name", code="account_exists")
    account_id = account_id_for(kind, name)
    r = await rpc(backends.ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[lpb.Account(
        id=account_id, ledger=lpb.LEDGER_ID_CREDITS, kind=KINDS[kind], name=f"{kind}:{name}",
        flags=lpb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS)]), timeout=timeout_s, metadata=metadata))
    result = r.results[0]
    if result in (_A.CREATE_ACCOUNT_RESULT_NAME_TAKEN, _A.CREATE_ACCOUNT_RESULT_EXISTS_WITH_DIFFERENT_FIELDS):
        raise ApiError(409, f"the ledger already has an account named {kind}:{name}", param="name",
                       code="account_exists")
    if result not in (_A.CREATE_ACCOUNT_RESULT_OK, _A.CREATE_ACCOUNT_RESULT_EXISTS):
        raise ApiError(502, f"the ledger refused the account: {_A.Name(result)}", code="upstream_error")
    provider_id, token = None, None
    if kind == "provider":
        try:
            p = await rpc(backends.registry.CreateProvider(
                rpb.CreateProviderRequest(name=name, ledger_account_id=account_id), timeout=timeout_s,
                metadata=metadata))
        except ApiError as e:
            if e.status == 409:
                raise ApiError(409, f"the registry already has a provider named {name!r}", param="name",
                               code="account_exists") from None
            raise
        provider_id, token = p.provider.provider_id, p.provider_token
    if not await store.insert_account(db, store.AccountRow(account_id, kind, name, provider_id)):
        raise ApiError(409, f"a {kind} named {name!r} exists", param="name", code="account_exists")
    return CreatedAccount(account_id, kind, name, provider_id, token)


async def find_account(db: Db, *, kind: str, name: str) -> CreatedAccount | None:
    """An account created earlier through the gateway (no token: it was shown once)."""
    row = await store.account_by_name(db, kind=kind, name=name)
    if row is None:
        return None
    return CreatedAccount(row.account_id, kind, name, row.provider_id, None)
