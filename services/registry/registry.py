"""The registry: its parts wired together behind one front for the servicer.

- the live view (live.py): every provider and node in memory, authoritative
  while the registry runs;
- registration (registration.py): providers, nodes and their tokens;
- transitions (transitions.py): every state change over the state machine
  (states.py), and verification;
- leases (leases.py): heartbeats, the sweep, eviction and load reports;
- links (links.py): which relay holds each linked node's link;
- reads (reads.py): one node, a page of nodes, a snapshot;
- the writer (writer.py) and the watch hub (hub.py): every state change is
  applied in memory, published to watchers and handed to the one ordered
  writer in a single synchronous step;
- trust: the model catalog (catalog.py, catalog_ops.py), the operator
  controls (operators.py, bans.py) and spot-check verdicts (checks.py,
  reputation.py), their SQL in trust_store.py.
"""

from __future__ import annotations

import asyncpg
import structlog

from idlegrid.common.errors import Unauthenticated
from idlegrid.registry import reads, states, store, trust_store, validate
from idlegrid.registry.bans import Bans
from idlegrid.registry.canary import Verifier
from idlegrid.registry.catalog import Catalog
from idlegrid.registry.catalog_ops import CatalogOps
from idlegrid.registry.checks import Checks
from idlegrid.registry.direct import Resolver
from idlegrid.registry.hub import WatchHub
from idlegrid.registry.leases import Leases
from idlegrid.registry.links import Links
from idlegrid.registry.live import LiveView
from idlegrid.registry.operators import Operators
from idlegrid.registry.reach import Reach
from idlegrid.registry.records import LiveNode, Provider, Verification
from idlegrid.registry.registration import Principal, Registrar
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.transitions import Lifecycle
from idlegrid.registry.v1 import registry_pb2 as pb
from idlegrid.registry.writer import ChangeWriter

log = structlog.get_logger("registry")


class Registry:
    def __init__(self, pool: asyncpg.Pool, settings: RegistrySettings, verifier: Verifier, *,
                 reach: Reach | None = None, resolver: Resolver | None = None) -> None:
        self.settings = settings
        self._pool = pool
        self._writer = ChangeWriter(pool, batch_max=settings.write_batch_max, pending_max=4 * settings.nodes_max)
        self.hub = WatchHub(buffer_max=settings.watch_buffer_max, watcher_queue_max=settings.watcher_queue_max,
                            watchers_max=settings.watchers_max,
                            snapshot_reuse_s=settings.load_report_interval_ms / 1000)
        self.view = LiveView()
        self.catalog = Catalog()
        self._bans = Bans()
        self._lifecycle = Lifecycle(view=self.view, hub=self.hub, writer=self._writer, verifier=verifier,
                                    settings=settings, reach=reach or Reach(), catalog=self.catalog)
        self._leases = Leases(view=self.view, hub=self.hub, lifecycle=self._lifecycle, settings=settings)
        self._registrar = Registrar(pool=pool, settings=settings, view=self.view, writer=self._writer,
                                    lifecycle=self._lifecycle, leases=self._leases, catalog=self.catalog,
                                    bans=self._bans, resolver=resolver)
        self._links = Links(view=self.view, lifecycle=self._lifecycle, leases=self._leases)
        self.operators = Operators(pool=pool, view=self.view, lifecycle=self._lifecycle, bans=self._bans)
        self.catalog_ops = CatalogOps(pool=pool, view=self.view, lifecycle=self._lifecycle, catalog=self.catalog)
        self.checks = Checks(pool=pool, view=self.view, lifecycle=self._lifecycle)

    @property
    def providers(self) -> dict[bytes, Provider]:
        return self.view.providers

    @property
    def nodes(self) -> dict[bytes, LiveNode]:
        return self.view.nodes

    @property
    def sweeps(self) -> int:
        return self._leases.sweeps

    @property
    def heartbeats_total(self) -> int:
        return self._leases.heartbeats_total

    # ------------------------------------------------------------ start and stop

    async def open(self) -> None:
        """Loads the live view from the database and starts the background
        work. Nodes that were live get a fresh lease; nodes caught mid-
        verification go OFFLINE (their agents register again), and so do
        linked nodes: their links are not stored; their agents register and
        link again. SUSPENDED nodes stay SUSPENDED."""
        self._leases.open()
        async with self._pool.acquire() as conn:
            for m in await trust_store.load_catalog(conn):
                self.catalog.models[m.name] = m
            self._bans.hosts |= await trust_store.load_banned(conn)
            for p in await store.load_providers(conn):
                self.view.providers[p.id] = p
            loaded = await store.load_nodes(conn, self.view.providers, retention_s=self.settings.offline_retention_s)
            reputations = await trust_store.load_reputations(conn, [n.id for n in loaded])
        self._writer.start()
        for n in loaded:
            n.heartbeat_interval_ms = self.settings.heartbeat_interval_ms
            n.tokenizers = {o.name: self.catalog.tokenizer(o.name) for o in n.offers}
            for o in n.offers:  # an offer the catalog no longer sells is not verified
                v = n.verification.get((o.name, o.version))
                if v is not None and v.verified and not self.catalog.conforms(o):
                    n.verification[(o.name, o.version)] = Verification(False, v.canary_latency_us)
            if n.id in reputations:
                n.reputation = reputations[n.id]
            self._leases.renew(n)
            self.view.add(n)
        for n in loaded:
            if n.state in (states.OFFLINE, states.SUSPENDED):
                continue
            if n.linked:
                self._lifecycle.transition(n, states.OFFLINE, pb.STATE_REASON_REGISTRY_RESTARTED,
                                           "the registry restarted; the node registers and links again")
            elif n.state in (states.JOINING, states.VERIFYING):
                self._lifecycle.transition(n, states.OFFLINE, pb.STATE_REASON_REGISTRY_RESTARTED,
                                           "the registry restarted during verification; register again")
        await self._writer.flush()
        self._leases.start()
        log.info("registry.opened", providers=len(self.view.providers), nodes=len(self.view.nodes),
                 skip_verification=self.settings.skip_verification)

    async def close(self) -> None:
        await self._leases.close()
        await self._lifecycle.close()
        await self._writer.stop()

    def use_resolver(self, resolver: Resolver) -> None:
        """How direct endpoints' hosts resolve from now on (a test seam)."""
        self._registrar.resolver = resolver

    # ------------------------------------------------------------ for the servicer

    def authenticate(self, token: str | None) -> Principal:
        return self._registrar.authenticate(token)

    async def create_provider(self, request: pb.CreateProviderRequest) -> tuple[Provider, str]:
        return await self._registrar.create_provider(request)

    async def register(self, who: Principal, request: pb.RegisterNodeRequest) -> tuple[LiveNode, str]:
        return await self._registrar.register(who, request)

    def heartbeat(self, node: LiveNode, load: pb.NodeLoad) -> None:
        self._leases.heartbeat(node, load)

    async def drain(self, who: Principal, node_id: bytes) -> LiveNode:
        node = self._registrar.owned(who, node_id)
        await self._lifecycle.drain(node, requested_by=who.requester)
        return node

    async def deregister(self, who: Principal, node_id: bytes) -> LiveNode:
        node = self._registrar.owned(who, node_id)
        await self._lifecycle.deregister(node, requested_by=who.requester)
        return node

    async def pause(self, who: Principal, request: pb.SetPausedRequest) -> LiveNode:
        node = self._registrar.owned(who, request.node_id)
        await self._lifecycle.pause(node, paused=request.paused, detail=validate.pause_detail(request.detail))
        return node

    def attach_link(self, node_token: str | None, request: pb.AttachLinkRequest) -> LiveNode:
        """A relay reports a node's new link; the node's own token proves the node."""
        validate.attach(request)
        who = self._registrar.authenticate(node_token)
        if who.node is None:
            raise Unauthenticated("AttachLink takes the node's token in x-idlegrid-node-token")
        node = self._registrar.owned(who, request.node_id)
        return self._links.attach(node, request)

    async def detach_link(self, request: pb.DetachLinkRequest) -> bool:
        validate.node_id(request.node_id)
        validate.link_id(request.link_id)
        return await self._links.detach(request.node_id, request.link_id)

    async def agent_unlinked(self, node: LiveNode, unlinked_for_ms: int) -> None:
        await self._links.agent_unlinked(node, unlinked_for_ms)

    # ------------------------------------------------------------ trust

    async def put_catalog_model(self, request: pb.PutCatalogModelRequest) -> pb.CatalogModel:
        return await self.catalog_ops.put(request)

    def list_catalog(self) -> list[pb.CatalogModel]:
        return [self.catalog.models[k] for k in sorted(self.catalog.models)]

    async def remove_catalog_model(self, request: pb.RemoveCatalogModelRequest) -> None:
        await self.catalog_ops.remove(request)

    async def report_check(self, request: pb.ReportCheckRequest) -> LiveNode:
        return await self.checks.report(request)

    def get(self, node_id: bytes) -> LiveNode:
        return reads.get(self.view, node_id)

    def list(self, request: pb.ListNodesRequest) -> tuple[list[LiveNode], bytes]:
        return reads.page(self.view, request)

    def snapshot(self) -> list[pb.Node]:
        return reads.snapshot(self.view)
