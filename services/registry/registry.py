"""The registry's rules: providers, node registration and the lifecycle,
verification, leases, drain and deregistration, over the in-memory live view.

The live view is authoritative while the registry runs. Every state change is
applied in memory, published to watchers and handed to the one ordered
writer in a single synchronous step; a new node is written before it enters
memory, so a failed registration leaves nothing behind. Heartbeats touch only
memory: they renew the lease and keep the load (soft state, never written).
"""

from __future__ import annotations

import asyncio
import bisect
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
import structlog

from idlegrid.common.errors import (
    Conflict,
    FailedPrecondition,
    IdlegridError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from idlegrid.registry import credentials, states, store, validate
from idlegrid.registry.canary import Verifier
from idlegrid.registry.hub import WatchHub
from idlegrid.registry.records import LiveNode, Provider, Verification
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.store import Change, Registration
from idlegrid.registry.v1 import registry_pb2 as pb
from idlegrid.registry.writer import Writer

log = structlog.get_logger("registry")

DETAIL_CHARS_MAX = 1_024
EVICT_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: a provider (provider token) or a node (node token). For a
    node, ``digest`` is the token digest it proved, so a long-lived stream can
    tell when the token was replaced or revoked."""

    provider: Provider
    node: LiveNode | None = None
    digest: bytes | None = None


class Registry:
    def __init__(self, pool: asyncpg.Pool, settings: RegistrySettings, verifier: Verifier) -> None:
        self.settings = settings
        self._pool = pool
        self._verifier = verifier
        self._writer = Writer(pool, batch_max=settings.write_batch_max, pending_max=4 * settings.nodes_max)
        self.hub = WatchHub(buffer_max=settings.watch_buffer_max, watcher_queue_max=settings.watcher_queue_max,
                            watchers_max=settings.watchers_max,
                            snapshot_reuse_s=settings.load_report_interval_ms / 1000)
        self.providers: dict[bytes, Provider] = {}
        self.nodes: dict[bytes, LiveNode] = {}
        self._live: set[LiveNode] = set()          # not OFFLINE: their leases are checked
        self._dirty_loads: set[LiveNode] = set()   # heartbeated since the last load report
        self._verifications: dict[bytes, asyncio.Task] = {}
        self._registering: set[bytes] = set()
        self._slots = asyncio.Semaphore(settings.verifications_max)
        self._sorted_ids: list[bytes] | None = None
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.heartbeats_total = 0
        self.sweeps = 0

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Loads the live view from the database and starts the background work."""
        self._loop = asyncio.get_running_loop()
        async with self._pool.acquire() as conn:
            for p in await store.load_providers(conn):
                self.providers[p.id] = p
            loaded = await store.load_nodes(conn, self.providers, retention_s=self.settings.offline_retention_s)
        self._writer.start()
        lease_deadline = self._loop.time() + self.settings.lease_s
        for n in loaded:
            n.heartbeat_interval_ms = self.settings.heartbeat_interval_ms
            n.lease_deadline = lease_deadline  # a fresh lease for nodes that were live
            self._add(n)
        for n in loaded:
            if n.state in (states.JOINING, states.VERIFYING):
                self._transition(n, states.OFFLINE, pb.STATE_REASON_REGISTRY_RESTARTED,
                                 "the registry restarted during verification; register again")
        await self._writer.flush()
        self._tasks = [asyncio.create_task(self._sweep(), name="registry-sweep"),
                       asyncio.create_task(self._report_loads(), name="registry-loads")]
        for t in self._tasks:
            t.add_done_callback(_died_loudly)
        log.info("registry.opened", providers=len(self.providers), nodes=len(self.nodes),
                 skip_verification=self.settings.skip_verification)

    async def close(self) -> None:
        tasks = [*self._tasks, *self._verifications.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._writer.stop()

    # ------------------------------------------------------------ authentication

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated("a provider or node token is required (authorization: Bearer <token>)")
        parsed = credentials.parse(token)
        if parsed is None:
            raise Unauthenticated("malformed token")
        kind, principal_id = parsed
        if kind == credentials.PROVIDER:
            p = self.providers.get(principal_id)
            if p is None or not credentials.matches(token, p.token_digest):
                raise Unauthenticated("unknown or revoked token")
            return Principal(provider=p)
        n = self.nodes.get(principal_id)
        if n is None or not credentials.matches(token, n.token_digest):
            raise Unauthenticated("unknown or revoked token")
        return Principal(provider=n.provider, node=n, digest=n.token_digest)

    def _owned(self, who: Principal, node_id: bytes) -> LiveNode:
        """The node ``who`` may act on: itself, or one of its provider's nodes."""
        validate.node_id(node_id)
        if who.node is not None:
            if who.node.id != node_id:
                raise PermissionDenied("a node token acts only on its own node")
            return who.node
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {uuid.UUID(bytes=node_id)}")
        if node.provider is not who.provider:
            raise PermissionDenied("the node belongs to another provider")
        return node

    # ------------------------------------------------------------ providers

    async def create_provider(self, request: pb.CreateProviderRequest) -> tuple[Provider, str]:
        name, account = validate.provider(request)
        pid = uuid.uuid4().bytes
        token, digest = credentials.mint(credentials.PROVIDER, pid)
        p = Provider(id=pid, name=name, ledger_account_id=account, token_digest=digest, created_at=time.time())
        await store.insert_provider(self._pool, p)
        self.providers[pid] = p
        log.info("registry.provider_created", provider_id=str(uuid.UUID(bytes=pid)), name=name)
        return p, token

    # ------------------------------------------------------------ registration

    async def register(self, who: Principal, request: pb.RegisterNodeRequest) -> tuple[LiveNode, str]:
        if who.node is not None:
            raise PermissionDenied("RegisterNode takes the provider token, not a node token")
        validate.registration(request)
        node_id = request.node_id or uuid.uuid4().bytes
        node = self.nodes.get(node_id)
        if request.node_id:
            if node is None:
                owner = await store.node_owner(self._pool, node_id)
                if owner is None:
                    raise NotFound(f"no node {uuid.UUID(bytes=node_id)}")
                if owner != who.provider.id:
                    raise PermissionDenied("the node belongs to another provider")
            elif node.provider is not who.provider:
                raise PermissionDenied("the node belongs to another provider")
        if node_id in self._registering:
            raise Conflict("a registration of this node is already in progress")
        if node is None and len(self.nodes) + len(self._registering) >= self.settings.nodes_max:
            raise ResourceExhausted(f"the registry holds its maximum of {self.settings.nodes_max} nodes")
        self._writer.room()
        self._registering.add(node_id)
        try:
            token, digest = credentials.mint(credentials.NODE, node_id)
            if node is None and request.node_id:  # left the live view: back from the database
                async with self._pool.acquire() as conn:
                    (node,) = await store.load_nodes(conn, self.providers, retention_s=0, node_id=node_id)
                node.heartbeat_interval_ms = self.settings.heartbeat_interval_ms
                self._add(node)
            if node is None:
                node = self._new_node(node_id, who.provider, request, digest)
                await self._writer.submit(Registration.of(node))
                node.revision = self.hub.next_revision()
                node.lease_deadline = self._loop.time() + self.settings.lease_s
                self._add(node)
                self.hub.publish(node.revision, pb.DELTA_KIND_UPSERTED, node.to_proto())
            else:
                self._cancel_verification(node)
                self._writer.room()
                self._reset(node, request, digest)
                written = self._writer.submit(Registration.of(node))
                self._apply(node, states.JOINING, pb.STATE_REASON_REGISTERED, "registered again")
                await written
        finally:
            self._registering.discard(node_id)
        self._start_verification(node)
        log.info("registry.node_registered", node_id=str(uuid.UUID(bytes=node_id)), endpoint=node.endpoint,
                 models=[o.name for o in node.offers])
        return node, token

    def _new_node(self, node_id: bytes, provider: Provider, r: pb.RegisterNodeRequest, digest: bytes) -> LiveNode:
        at = time.time()
        return LiveNode(
            id=node_id, provider=provider, token_digest=digest, endpoint=r.endpoint, hardware=r.hardware,
            region=r.region, labels=dict(r.labels), offers=list(r.models), agent_version=r.agent_version,
            registered_at=at, state=states.JOINING, reason=pb.STATE_REASON_REGISTERED, detail="",
            state_changed_at=at, heartbeat_interval_ms=self.settings.heartbeat_interval_ms)

    def _reset(self, node: LiveNode, r: pb.RegisterNodeRequest, digest: bytes) -> None:
        node.token_digest = digest
        node.endpoint, node.hardware, node.region = r.endpoint, r.hardware, r.region
        node.labels, node.offers, node.agent_version = dict(r.labels), list(r.models), r.agent_version
        node.registered_at = time.time()
        node.verification = {}
        node.load = None
        node.generation += 1
        node.heartbeat_interval_ms = self.settings.heartbeat_interval_ms
        node.lease_deadline = self._loop.time() + self.settings.lease_s

    # ------------------------------------------------------------ state changes

    def _apply(self, node: LiveNode, state: int, reason: int, detail: str, *, revoke: bool = False) -> float:
        """Changes the state in memory and publishes it (no await): returns the time."""
        states.check(node.state, state, reason)
        at = time.time()
        node.state, node.reason, node.detail = state, reason, detail[:DETAIL_CHARS_MAX]
        node.state_changed_at = at
        if revoke:
            node.token_digest = None
        node.revision = self.hub.next_revision()
        node.changed()
        if state == states.OFFLINE:
            self._live.discard(node)
        else:
            self._live.add(node)
        self.hub.publish(node.revision, pb.DELTA_KIND_UPSERTED, node.to_proto())
        return at

    def _transition(self, node: LiveNode, state: int, reason: int, detail: str = "", *, revoke: bool = False,
                    verification: tuple[tuple[str, str, bool, int], ...] = ()) -> asyncio.Future:
        self._writer.room()
        at = self._apply(node, state, reason, detail, revoke=revoke)
        return self._writer.submit(Change(node_id=node.id, state=state, reason=reason, detail=node.detail, at=at,
                                          revoke_token=revoke, verification=verification))

    def _add(self, node: LiveNode) -> None:
        self.nodes[node.id] = node
        self._sorted_ids = None
        if node.state != states.OFFLINE:
            self._live.add(node)

    # ------------------------------------------------------------ verification

    def _start_verification(self, node: LiveNode) -> None:
        task = asyncio.create_task(self._verify(node, node.generation), name="registry-verify")
        self._verifications[node.id] = task

        def forget(t: asyncio.Task) -> None:
            if self._verifications.get(node.id) is t:
                del self._verifications[node.id]

        task.add_done_callback(forget)

    def _cancel_verification(self, node: LiveNode) -> None:
        task = self._verifications.pop(node.id, None)
        if task is not None:
            task.cancel()

    async def _verify(self, node: LiveNode, generation: int) -> None:
        try:
            async with self._slots:
                if node.generation != generation or node.state != states.JOINING:
                    return
                await self._transition(node, states.VERIFYING, pb.STATE_REASON_VERIFICATION_STARTED)
                result = await self._verifier.verify(node.endpoint, list(node.offers))
            if node.generation != generation or node.state != states.VERIFYING:
                return  # the lease ran out, or the node registered again, meanwhile
            if not result.ok:
                log.warning("registry.verification_failed", node_id=str(uuid.UUID(bytes=node.id)),
                            detail=result.detail)
                await self._transition(node, states.OFFLINE, pb.STATE_REASON_VERIFICATION_FAILED, result.detail)
                return
            rows = []
            for o in node.offers:
                v = Verification(verified=True, canary_latency_us=result.latency_us.get((o.name, o.version), 0))
                node.verification[(o.name, o.version)] = v
                rows.append((o.name, o.version, True, v.canary_latency_us))
            reason = (pb.STATE_REASON_VERIFICATION_SKIPPED if self.settings.skip_verification
                      else pb.STATE_REASON_VERIFIED)
            await self._transition(node, states.READY, reason, result.detail, verification=tuple(rows))
        except asyncio.CancelledError:
            raise
        except IdlegridError as e:
            log.error("registry.verification_not_recorded", node_id=str(uuid.UUID(bytes=node.id)), error=e.message)

    # ------------------------------------------------------------ heartbeats and leases

    def heartbeat(self, node: LiveNode, load: pb.NodeLoad) -> None:
        """The hot path: memory only."""
        node.load = load
        node.load_at = time.time()
        if node.state != states.OFFLINE:
            node.lease_deadline = self._loop.time() + self.settings.lease_s
        self._dirty_loads.add(node)
        self.heartbeats_total += 1

    async def _sweep(self) -> None:
        interval_s = self.settings.sweep_interval_ms / 1000
        next_evict = self._loop.time() + EVICT_EVERY_S
        lease_text = (f"no heartbeat for {self.settings.lease_s:g} s ({self.settings.lease_intervals} "
                      f"intervals of {self.settings.heartbeat_interval_ms} ms)")
        while True:
            await asyncio.sleep(interval_s)
            self.sweeps += 1
            now = self._loop.time()
            expired = [n for n in self._live if n.lease_deadline < now]
            written = []
            for n in expired:
                try:
                    self._cancel_verification(n)
                    written.append(self._transition(n, states.OFFLINE, pb.STATE_REASON_LEASE_EXPIRED, lease_text))
                except ResourceExhausted:
                    break  # the rest on the next sweep
            if expired:
                log.info("registry.leases_expired", nodes=len(written))
            if now >= next_evict:
                next_evict = now + EVICT_EVERY_S
                self._evict(time.time() - self.settings.offline_retention_s)
            if written:
                await asyncio.gather(*written, return_exceptions=True)

    def _evict(self, before: float) -> None:
        """OFFLINE nodes past retention leave the live view (their rows stay)."""
        gone = [n for n in self.nodes.values()
                if n.state == states.OFFLINE and n.state_changed_at < before and n.id not in self._registering]
        for n in gone:
            del self.nodes[n.id]
            n.token_digest = None  # streams holding it stop
            self._dirty_loads.discard(n)
            self.hub.publish(self.hub.next_revision(), pb.DELTA_KIND_REMOVED, pb.Node(node_id=n.id))
        if gone:
            self._sorted_ids = None
            log.info("registry.nodes_evicted", nodes=len(gone))

    async def _report_loads(self) -> None:
        interval_s = self.settings.load_report_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            dirty, self._dirty_loads = self._dirty_loads, set()
            if dirty and self.hub.watchers:
                self.hub.publish_loads([n.load_proto() for n in dirty if n.load is not None])

    # ------------------------------------------------------------ drain, deregister

    async def drain(self, who: Principal, node_id: bytes) -> LiveNode:
        node = self._owned(who, node_id)
        if node.state == states.DRAINING:
            return node
        if node.state != states.READY:
            raise FailedPrecondition(f"the node is {states.NAMES[node.state]}; only a ready node drains "
                                     "(deregister it instead)")
        by = "the node" if who.node is not None else "its provider"
        await self._transition(node, states.DRAINING, pb.STATE_REASON_DRAIN_REQUESTED, f"requested by {by}")
        return node

    async def deregister(self, who: Principal, node_id: bytes) -> LiveNode:
        node = self._owned(who, node_id)
        if node.state == states.OFFLINE and node.reason == pb.STATE_REASON_DEREGISTERED:
            return node
        self._cancel_verification(node)
        by = "the node" if who.node is not None else "its provider"
        await self._transition(node, states.OFFLINE, pb.STATE_REASON_DEREGISTERED, f"requested by {by}",
                               revoke=True)
        return node

    # ------------------------------------------------------------ reads

    def get(self, node_id: bytes) -> LiveNode:
        validate.node_id(node_id)
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {uuid.UUID(bytes=node_id)}")
        return node

    def list(self, request: pb.ListNodesRequest) -> tuple[list[LiveNode], bytes]:
        size = validate.page_size(request.page_size)
        if request.page_token:
            validate.node_id(request.page_token, "page_token")
        if request.provider_id:
            validate.node_id(request.provider_id, "provider_id")
        wanted_states = set(request.states)
        if wanted_states - states.NAMES.keys():
            raise InvalidArgument("states holds an unknown NodeState")
        if self._sorted_ids is None:
            self._sorted_ids = sorted(self.nodes)
        ids = self._sorted_ids
        start = bisect.bisect_right(ids, request.page_token) if request.page_token else 0
        page: list[LiveNode] = []
        for node_id in ids[start:]:
            n = self.nodes.get(node_id)
            if n is None or not _matches(n, request.model, wanted_states, request.provider_id):
                continue
            if len(page) == size:
                return page, page[-1].id  # there is at least one more
            page.append(n)
        return page, b""

    def snapshot(self) -> list[pb.Node]:
        return [n.to_proto() for n in self.nodes.values()]

    def nodes_in(self, wanted: Iterable[int]) -> list[LiveNode]:
        wanted = set(wanted)
        return [n for n in self.nodes.values() if n.state in wanted]


def _died_loudly(task: asyncio.Task) -> None:
    """A background loop only ends when cancelled; anything else is a bug
    (a broken invariant, say) and must not pass quietly."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("registry.background_task_died", task=task.get_name(), exc_info=task.exception())


def _matches(n: LiveNode, model: str, wanted_states: set[int], provider_id: bytes) -> bool:
    if wanted_states and n.state not in wanted_states:
        return False
    if provider_id and n.provider.id != provider_id:
        return False
    return not model or n.serves(model)
