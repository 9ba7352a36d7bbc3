"""Node links: which relay holds each linked node's link.

A linked node (registered without an endpoint) is reached only through the
relay that holds its link. The relay reports a new link (AttachLink, proving
the node with its token) and a dropped one (DetachLink); the agent reports
in its heartbeats when it has held no link for a while, which catches a
relay that died without detaching.

    no link ──attach──▶ linked ──detach / agent unlinked──▶ no link
                          │ ▲
                          └─┘ attach (a newer link replaces it)

- attach: the link is recorded (soft state, published to watchers in
  Node.link); a JOINING node, or one OFFLINE because its link was lost, is
  verified through the link (→ VERIFYING → READY);
- detach: only the node's current link; a node in VERIFYING, READY, PAUSED
  or DRAINING goes OFFLINE (LINK_LOST). Detaching an older link changes
  nothing (a newer link on another relay won).

Links are not written: after a registry restart the agents register and
link again.
"""

from __future__ import annotations

import time
import uuid

import structlog

from idlegrid.common.errors import FailedPrecondition, NotFound
from idlegrid.registry import states
from idlegrid.registry.leases import Leases
from idlegrid.registry.live import LiveView
from idlegrid.registry.records import Link, LiveNode
from idlegrid.registry.transitions import Lifecycle
from idlegrid.registry.v1 import registry_pb2 as pb

log = structlog.get_logger("registry")

# States a lost link takes a node out of.
_ROUTED = frozenset({states.VERIFYING, states.READY, states.PAUSED, states.DRAINING})


class Links:
    def __init__(self, *, view: LiveView, lifecycle: Lifecycle, leases: Leases) -> None:
        self._view = view
        self._lifecycle = lifecycle
        self._leases = leases

    def attach(self, node: LiveNode, request: pb.AttachLinkRequest) -> LiveNode:
        """Records the node's new link and starts its verification when it
        waits for one."""
        if not node.linked:
            raise FailedPrecondition("the node registered a direct endpoint; it takes no link "
                                     "(register it again without an endpoint)")
        node.link = Link(relay_id=request.relay_id, relay_addr=request.relay_addr, link_id=request.link_id,
                         attached_at=time.time())
        self._lifecycle.publish(node)
        if node.state == states.JOINING or (node.state == states.OFFLINE
                                            and node.reason == pb.STATE_REASON_LINK_LOST):
            self._leases.renew(node)  # the link proves the agent alive
            if not self._lifecycle.verifying(node):
                self._lifecycle.start_verification(node)
        log.info("registry.link_attached", node_id=str(uuid.UUID(bytes=node.id)), relay_id=request.relay_id,
                 state=states.NAMES[node.state])
        return node

    async def detach(self, node_id: bytes, link_id: bytes, *, why: str = "") -> bool:
        """Drops the node's link if ``link_id`` is its current one: True; else
        nothing changes: False."""
        node = self._view.nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {uuid.UUID(bytes=node_id)}")
        link = node.link
        if link is None or link.link_id != link_id:
            return False
        detail = why or f"its link to relay {link.relay_id} dropped"
        if node.state in _ROUTED:
            self._lifecycle.room()  # nothing changes unless the change can be written
            node.link = None
            self._lifecycle.cancel_verification(node)
            await self._lifecycle.transition(node, states.OFFLINE, pb.STATE_REASON_LINK_LOST, detail)
        else:
            node.link = None
            self._lifecycle.publish(node)
        log.info("registry.link_detached", node_id=str(uuid.UUID(bytes=node.id)), relay_id=link.relay_id,
                 detail=detail)
        return True

    async def agent_unlinked(self, node: LiveNode, unlinked_for_ms: int) -> None:
        """A heartbeat says the agent has held no link for ``unlinked_for_ms``:
        a link attached before that is gone, whatever its relay said."""
        link = node.link
        if link is None or not unlinked_for_ms:
            return
        if link.attached_at < time.time() - unlinked_for_ms / 1000:
            await self.detach(node.id, link.link_id,
                              why=f"the agent lost its link to relay {link.relay_id} {unlinked_for_ms} ms ago")
