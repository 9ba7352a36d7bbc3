"""Changes to the catalog (PutCatalogModel, RemoveCatalogModel), each
appended to the operator actions in the same transaction, and what they do
to the nodes that offer the model:

- put: the entry is added or replaced; nodes offering the model get its
  tokenizer, and an offer that no longer matches the entry (kind, context
  length, digest, price ceiling) is no longer verified (not routable for it);
- remove: every offer of the model is no longer verified. A node offering it
  is verified again for it only when it registers again (after a new put).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import asyncpg

from idlegrid.common.errors import InvalidArgument, NotFound
from idlegrid.registry import trust_store, validate
from idlegrid.registry.catalog import Catalog, check_model
from idlegrid.registry.live import LiveView
from idlegrid.registry.records import Verification, ts
from idlegrid.registry.transitions import Lifecycle
from idlegrid.registry.trust_store import Action
from idlegrid.registry.v1 import registry_pb2 as pb


class CatalogOps:
    def __init__(self, *, pool: asyncpg.Pool, view: LiveView, lifecycle: Lifecycle, catalog: Catalog) -> None:
        self._pool = pool
        self._view = view
        self._lifecycle = lifecycle
        self._catalog = catalog

    async def put(self, r: pb.PutCatalogModelRequest) -> pb.CatalogModel:
        validate.operator(r.actor, r.reason)
        if not r.HasField("model"):
            raise InvalidArgument("model is required")
        m = pb.CatalogModel()
        m.CopyFrom(r.model)
        check_model(m)
        now = time.time()
        m.updated_at.CopyFrom(ts(now))
        m.updated_by = r.actor
        async with self._pool.acquire() as conn, conn.transaction():
            await trust_store.put_model(conn, m, datetime.fromtimestamp(now, tz=UTC))
            await trust_store.append_action(conn, Action(r.actor, "put_catalog_model", m.name, r.reason))
        self._catalog.models[m.name] = m
        self._refresh(m.name)
        return m

    async def remove(self, r: pb.RemoveCatalogModelRequest) -> None:
        validate.operator(r.actor, r.reason)
        if r.name not in self._catalog.models:
            raise NotFound(f"model {r.name[:128]!r} is not in the catalog", reason="model_not_in_catalog")
        async with self._pool.acquire() as conn, conn.transaction():
            if not await trust_store.remove_model(conn, r.name):
                raise NotFound(f"model {r.name!r} is not in the catalog", reason="model_not_in_catalog")
            await trust_store.append_action(conn, Action(r.actor, "remove_catalog_model", r.name, r.reason))
        self._catalog.models.pop(r.name, None)
        self._refresh(r.name)

    def _refresh(self, name: str) -> None:
        """Nodes offering ``name`` see the catalog's change: its tokenizer, and
        their offers that no longer match are not verified. Watchers see them."""
        for node in self._view.nodes.values():
            if not node.serves(name):
                continue
            node.tokenizers[name] = self._catalog.tokenizer(name)
            for o in node.offers:
                v = node.verification.get((o.name, o.version))
                if o.name == name and v is not None and v.verified and not self._catalog.conforms(o):
                    node.verification[(o.name, o.version)] = Verification(False, v.canary_latency_us)
            self._lifecycle.publish(node)
