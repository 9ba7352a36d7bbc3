"""Operator controls (the gateway's admin path, or the operator identity):
suspensions, trust, provider tokens and banned endpoint hosts, each appended
to the operator actions with its actor and reason.

| action | effect |
|---|---|
| suspend_node / unsuspend_node | the node → SUSPENDED (STATE_REASON_SUSPENDED, the reason in its detail); unsuspending → VERIFYING, verified again. A node of a suspended provider is unsuspended with its provider |
| suspend_provider / unsuspend_provider | Provider.suspended; every node of it (OFFLINE ones too) → SUSPENDED, and nodes it registers later start SUSPENDED; unsuspending lifts every suspension of its nodes |
| trust_provider / untrust_provider | Provider.trusted, and Node.trusted on each of its nodes (watchers see it) |
| rotate_provider_token | a new provider token (shown once); the old one stops at once |
| revoke_provider_token | the provider token and its nodes' tokens stop; its nodes go OFFLINE (DEREGISTERED) |
| ban_endpoint / unban_endpoint | registrations on the host are refused; nodes on it go OFFLINE (DEREGISTERED) |

A SUSPENDED node never leaves SUSPENDED but by an unsuspension: a revoked
token or a banned host revokes its node token and leaves it SUSPENDED.

The action's row is written before its effect (the effect of an action that
changes node states follows through the writer), so no action goes
unrecorded.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from idlegrid.common.errors import FailedPrecondition, InvalidArgument, NotFound
from idlegrid.registry import credentials, states, trust_store, validate
from idlegrid.registry.bans import Bans, normalize
from idlegrid.registry.live import LiveView
from idlegrid.registry.records import LiveNode, Provider
from idlegrid.registry.transitions import Lifecycle
from idlegrid.registry.trust_store import Action
from idlegrid.registry.v1 import registry_pb2 as pb


def _hex(b: bytes) -> str:
    return str(uuid.UUID(bytes=b))


class Operators:
    def __init__(self, *, pool: asyncpg.Pool, view: LiveView, lifecycle: Lifecycle, bans: Bans) -> None:
        self._pool = pool
        self._view = view
        self._lifecycle = lifecycle
        self._bans = bans

    def _provider(self, provider_id: bytes) -> Provider:
        validate.node_id(provider_id, "provider_id")
        p = self._view.providers.get(provider_id)
        if p is None:
            raise NotFound(f"no provider {_hex(provider_id)}", reason="provider_not_found")
        return p

    def _nodes_of(self, p: Provider) -> list[LiveNode]:
        return [n for n in self._view.nodes.values() if n.provider is p]

    async def _flags_and_action(self, p: Provider, action: Action, **flags) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            if flags:
                await trust_store.set_provider_flags(conn, p.id, **flags)
            await trust_store.append_action(conn, action)

    # ------------------------------------------------------------ suspensions

    async def set_suspended(self, r: pb.SetSuspendedRequest) -> list[LiveNode]:
        """The nodes whose state changed."""
        validate.operator(r.actor, r.reason)
        target = r.WhichOneof("target")
        verb = "suspend" if r.suspended else "unsuspend"
        if target is None:
            raise InvalidArgument("node_id or provider_id is required")
        if target == "node_id":
            node = self._view.nodes.get(validate.node_id(r.node_id))
            if node is None:
                raise NotFound(f"no node {_hex(r.node_id)}")
            if not r.suspended and node.provider.suspended:
                raise FailedPrecondition("the node's provider is suspended: unsuspend the provider")
            self._lifecycle.room()
            await trust_store.append_action(self._pool, Action(r.actor, f"{verb}_node", _hex(node.id), r.reason))
            nodes = [node]
        else:
            p = self._provider(r.provider_id)
            nodes = self._nodes_of(p)
            self._lifecycle.room(len(nodes))
            await self._flags_and_action(p, Action(r.actor, f"{verb}_provider", _hex(p.id), r.reason),
                                         suspended=r.suspended, suspended_reason=r.reason if r.suspended else "")
            p.suspended, p.suspended_reason = r.suspended, r.reason if r.suspended else ""
        if r.suspended:
            who = "its provider is suspended" if target == "provider_id" else "suspended"
            writes = [(n, self._lifecycle.suspend(n, pb.STATE_REASON_SUSPENDED, f"{who} by an operator: {r.reason}"))
                      for n in nodes]
        else:
            writes = [(n, self._lifecycle.unsuspend(n, f"unsuspended by an operator: {r.reason}")) for n in nodes]
        changed = [(n, w) for n, w in writes if w is not None]
        await asyncio.gather(*(w for _, w in changed))
        return [n for n, _ in changed]

    # ------------------------------------------------------------ trust and tokens

    async def set_trusted(self, r: pb.SetProviderTrustedRequest) -> Provider:
        validate.operator(r.actor, r.reason)
        p = self._provider(r.provider_id)
        verb = "trust" if r.trusted else "untrust"
        await self._flags_and_action(p, Action(r.actor, f"{verb}_provider", _hex(p.id), r.reason), trusted=r.trusted)
        p.trusted = r.trusted
        for n in self._nodes_of(p):
            self._lifecycle.publish(n)  # Node.trusted changed
        return p

    async def rotate(self, r: pb.RotateProviderTokenRequest) -> str:
        validate.operator(r.actor, r.reason)
        p = self._provider(r.provider_id)
        token, digest = credentials.mint(credentials.PROVIDER, p.id)
        async with self._pool.acquire() as conn, conn.transaction():
            await trust_store.set_provider_token(conn, p.id, digest)
            await trust_store.append_action(conn, Action(r.actor, "rotate_provider_token", _hex(p.id), r.reason))
        p.token_digest = digest
        return token

    async def revoke(self, r: pb.RevokeProviderTokenRequest) -> list[bytes]:
        """The ids of the nodes that went OFFLINE."""
        validate.operator(r.actor, r.reason)
        p = self._provider(r.provider_id)
        nodes = self._nodes_of(p)
        self._lifecycle.room(len(nodes))
        async with self._pool.acquire() as conn, conn.transaction():
            await trust_store.set_provider_token(conn, p.id, None)
            await trust_store.append_action(conn, Action(r.actor, "revoke_provider_token", _hex(p.id), r.reason))
        p.token_digest = None
        return await self._end(nodes, f"its provider's token was revoked by an operator: {r.reason}")

    async def _end(self, nodes: list[LiveNode], detail: str) -> list[bytes]:
        went = [n.id for n in nodes if n.state not in (states.OFFLINE, states.SUSPENDED)]
        writes = [self._lifecycle.end_now(n, detail) for n in nodes]
        await asyncio.gather(*(w for w in writes if w is not None))
        return went

    # ------------------------------------------------------------ endpoints

    async def ban(self, r: pb.SetEndpointBannedRequest) -> list[bytes]:
        """The ids of the nodes that went OFFLINE (none on an unban)."""
        validate.operator(r.actor, r.reason)
        host = normalize(r.host)
        nodes = [n for n in self._view.nodes.values() if Bans.on(n, host)] if r.banned else []
        self._lifecycle.room(len(nodes))
        async with self._pool.acquire() as conn, conn.transaction():
            await trust_store.ban_host(conn, host, r.banned, r.actor)
            await trust_store.append_action(
                conn, Action(r.actor, "ban_endpoint" if r.banned else "unban_endpoint", host, r.reason))
        if not r.banned:
            self._bans.hosts.discard(host)
            return []
        self._bans.hosts.add(host)
        return await self._end(nodes, f"its endpoint host {host} was banned by an operator: {r.reason}")

    async def actions(self, r: pb.ListOperatorActionsRequest) -> pb.ListOperatorActionsResponse:
        after_seq, limit = validate.actions_page(r)
        page, next_seq = await trust_store.list_actions(self._pool, after_seq=after_seq, limit=limit)
        return pb.ListOperatorActionsResponse(actions=page, next_seq=next_seq)
