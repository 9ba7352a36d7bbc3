"""Registration: providers, their nodes, and the tokens that prove who calls.

A provider is created by an admin and gets a provider token. With it, the
provider's agent registers a node (a new one, or one of its own again: a
restarted agent) and gets a node token; every registration mints a new one,
so the old token stops working. A new node is written before it enters
memory, so a failed registration leaves nothing behind; a node registered
again goes back to JOINING, loses its link (the agent links again with its
new token) and is verified again.

Per-provider quotas (quotas.py) bound a provider's live nodes and its
registrations per minute.

A node registers without an endpoint (linked: reached only through its relay
link) or, where the operator enabled direct endpoints, with one: admitted by
direct.py (public addresses only, resolved once and pinned) and unique among
the live nodes (ALREADY_EXISTS).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass

import asyncpg
import structlog

from idlegrid.common.errors import (
    AlreadyExists,
    Conflict,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from idlegrid.registry import credentials, direct, states, store, validate
from idlegrid.registry.bans import Bans, host_of
from idlegrid.registry.catalog import Catalog
from idlegrid.registry.leases import Leases
from idlegrid.registry.live import LiveView
from idlegrid.registry.quotas import ProviderQuotas
from idlegrid.registry.records import LiveNode, Provider
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.store import Registration
from idlegrid.registry.transitions import Lifecycle
from idlegrid.registry.v1 import registry_pb2 as pb
from idlegrid.registry.validate import DETAIL_CHARS_MAX
from idlegrid.registry.writer import ChangeWriter

log = structlog.get_logger("registry")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: a provider (provider token) or a node (node token). For a
    node, ``digest`` is the token digest it proved, so a long-lived stream can
    tell when the token was replaced or revoked."""

    provider: Provider
    node: LiveNode | None = None
    digest: bytes | None = None

    @property
    def requester(self) -> str:
        """Who asked, as a node's state_detail says it."""
        return "the node" if self.node is not None else "its provider"


class Registrar:
    def __init__(self, *, pool: asyncpg.Pool, settings: RegistrySettings, view: LiveView, writer: ChangeWriter,
                 lifecycle: Lifecycle, leases: Leases, catalog: Catalog, bans: Bans,
                 resolver: direct.Resolver | None = None) -> None:
        self._pool = pool
        self._catalog = catalog
        self._bans = bans
        self.resolver = resolver or direct.system_resolver
        self._claimed: set[str] = set()  # direct endpoints of registrations in progress
        self._settings = settings
        self._view = view
        self._writer = writer
        self._lifecycle = lifecycle
        self._leases = leases
        self._quotas = ProviderQuotas(settings, view)

    # ------------------------------------------------------------ tokens

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated("a provider or node token is required (authorization: Bearer <token>)")
        parsed = credentials.parse(token)
        if parsed is None:
            raise Unauthenticated("malformed token")
        kind, principal_id = parsed
        if kind == credentials.PROVIDER:
            p = self._view.providers.get(principal_id)
            if p is None or not credentials.matches(token, p.token_digest):
                raise Unauthenticated("unknown or revoked token")
            return Principal(provider=p)
        n = self._view.nodes.get(principal_id)
        if n is None or not credentials.matches(token, n.token_digest):
            raise Unauthenticated("unknown or revoked token")
        return Principal(provider=n.provider, node=n, digest=n.token_digest)

    def owned(self, who: Principal, node_id: bytes) -> LiveNode:
        """The node ``who`` may act on: itself, or one of its provider's nodes."""
        validate.node_id(node_id)
        if who.node is not None:
            if who.node.id != node_id:
                raise PermissionDenied("a node token acts only on its own node")
            return who.node
        node = self._view.nodes.get(node_id)
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
        self._view.providers[pid] = p
        log.info("registry.provider_created", provider_id=str(uuid.UUID(bytes=pid)), name=name)
        return p, token

    # ------------------------------------------------------------ nodes

    async def register(self, who: Principal, request: pb.RegisterNodeRequest) -> tuple[LiveNode, str]:
        """Registers a node, or one of this provider's nodes again, and starts
        its verification: the node and its new token."""
        if who.node is not None:
            raise PermissionDenied("RegisterNode takes the provider token, not a node token")
        validate.registration(request)
        self._catalog.admit(request.models)
        endpoint = host = ""
        if request.endpoint:
            host = host_of(request.endpoint)
            self._bans.check(host)
            endpoint = await direct.admit(request.endpoint, self._settings, self.resolver)
            self._bans.check(host_of(endpoint))
        view, writer, lifecycle = self._view, self._writer, self._lifecycle
        node_id = request.node_id or uuid.uuid4().bytes
        node = view.nodes.get(node_id)
        if request.node_id:
            if node is None:
                owner = await store.node_owner(self._pool, node_id)
                if owner is None:
                    raise NotFound(f"no node {uuid.UUID(bytes=node_id)}")
                if owner != who.provider.id:
                    raise PermissionDenied("the node belongs to another provider")
            elif node.provider is not who.provider:
                raise PermissionDenied("the node belongs to another provider")
        if node_id in view.registering:
            raise Conflict("a registration of this node is already in progress")
        if endpoint and (endpoint in self._claimed or any(
                n.endpoint == endpoint and n.id != node_id for n in view.live)):
            raise AlreadyExists(f"endpoint {endpoint} is already another live node's")
        if node is None and len(view.nodes) + len(view.registering) >= self._settings.nodes_max:
            raise ResourceExhausted(f"the registry holds its maximum of {self._settings.nodes_max} nodes")
        writer.room()
        self._quotas.admit(who.provider, node)
        counted = node
        view.registering.add(node_id)
        if endpoint:
            self._claimed.add(endpoint)
        try:
            token, digest = credentials.mint(credentials.NODE, node_id)
            if node is None and request.node_id:  # left the live view: back from the database
                async with self._pool.acquire() as conn:
                    (node,) = await store.load_nodes(conn, view.providers, retention_s=0, node_id=node_id)
                node.heartbeat_interval_ms = self._settings.heartbeat_interval_ms
                view.add(node)
            if node is None:
                node = self._new_node(node_id, who.provider, request, digest, endpoint, host)
                await writer.submit(Registration.of(node))
                self._leases.renew(node)
                lifecycle.admit(node)
            else:
                lifecycle.cancel_verification(node)
                writer.room()
                state, reason, detail = self._entry(node, who.provider)
                self._reset(node, request, digest, endpoint, host)
                registration = Registration.of(node)
                registration = dataclasses.replace(registration, state=state, reason=reason, detail=detail)
                written = writer.submit(registration)
                lifecycle.apply(node, state, reason, detail)
                await written
        finally:
            self._quotas.done(who.provider, counted)
            view.registering.discard(node_id)
            self._claimed.discard(endpoint)
        if node.state != states.SUSPENDED:
            lifecycle.start_verification(node)  # a linked node waits in JOINING for its link
        log.info("registry.node_registered", node_id=str(uuid.UUID(bytes=node_id)), endpoint=node.endpoint or "(link)",
                 models=[o.name for o in node.offers])
        return node, token

    @staticmethod
    def _entry(node: LiveNode | None, provider: Provider) -> tuple[int, int, str]:
        """The state a registration enters: JOINING, or SUSPENDED for a
        suspended node (its reason kept) or a node of a suspended provider."""
        if node is not None and node.state == states.SUSPENDED:
            return states.SUSPENDED, node.reason, node.detail
        if provider.suspended:
            return (states.SUSPENDED, pb.STATE_REASON_SUSPENDED,
                    f"its provider is suspended by an operator: {provider.suspended_reason}"[:DETAIL_CHARS_MAX])
        return states.JOINING, pb.STATE_REASON_REGISTERED, "registered again" if node is not None else ""

    def _new_node(self, node_id: bytes, provider: Provider, r: pb.RegisterNodeRequest, digest: bytes,
                  endpoint: str, host: str) -> LiveNode:
        at = time.time()
        state, reason, detail = self._entry(None, provider)
        return LiveNode(
            id=node_id, provider=provider, token_digest=digest, endpoint=endpoint, hardware=r.hardware,
            region=r.region, labels=dict(r.labels), offers=list(r.models), agent_version=r.agent_version,
            registered_at=at, state=state, reason=reason, detail=detail,
            state_changed_at=at, heartbeat_interval_ms=self._settings.heartbeat_interval_ms, endpoint_host=host,
            tokenizers={o.name: self._catalog.tokenizer(o.name) for o in r.models})

    def _reset(self, node: LiveNode, r: pb.RegisterNodeRequest, digest: bytes, endpoint: str, host: str) -> None:
        """A node registered again: what it now says of itself, a new token,
        no link (the agent links again with the new token), a new generation
        (stale verifications see it), a fresh lease."""
        node.token_digest = digest
        node.link = None
        node.endpoint, node.hardware, node.region = endpoint, r.hardware, r.region
        node.endpoint_host = host
        node.tokenizers = {o.name: self._catalog.tokenizer(o.name) for o in r.models}
        node.labels, node.offers, node.agent_version = dict(r.labels), list(r.models), r.agent_version
        node.registered_at = time.time()
        node.verification = {}
        node.load = None
        node.generation += 1
        node.heartbeat_interval_ms = self._settings.heartbeat_interval_ms
        self._leases.renew(node)
