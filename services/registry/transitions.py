"""The node lifecycle in motion: every state change, and the verification
that takes a new node from JOINING to READY (or OFFLINE).

A change is checked against the state machine (states.py), applied to the
live view, published to watchers and handed to the writer in one
synchronous step, so watchers, memory and the tables see changes in the same
order. The writer's room is checked first: a change that could not be
written is never made.

Verification runs in the background, at most ``verifications_max`` nodes at
a time and ``verifications_per_provider_max`` of one provider (JOINING waits
for a slot); waiting providers are served round-robin (verify_queue.py), so
one provider's slow nodes cannot starve the others'. A node that registers again, or whose
lease runs out, meanwhile makes the running verification stale: it checks
the node's generation and state before each step and drops its result.
A linked node is verified through its link (reach.py): without one it waits
in JOINING; when its link moves to another relay mid-verification, the run
starts again through the new one.

PAUSED (SetPaused): a READY node whose owner needs the GPU; no new work;
resumed → READY.

SUSPENDED (an operator, or a failed spot check): no jobs, and nothing but an
operator takes the node out of it (unsuspend → VERIFYING, verified again).
Deregistering a suspended node only revokes its token; the lease sweep,
links, pauses and registrations leave it SUSPENDED.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import structlog

from idlegrid.common.errors import FailedPrecondition, IdlegridError
from idlegrid.registry import states
from idlegrid.registry.canary import Verifier
from idlegrid.registry.catalog import Catalog
from idlegrid.registry.hub import WatchHub
from idlegrid.registry.live import LiveView
from idlegrid.registry.reach import Reach
from idlegrid.registry.records import LiveNode, Verification
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.store import Change
from idlegrid.registry.v1 import registry_pb2 as pb
from idlegrid.registry.validate import DETAIL_CHARS_MAX
from idlegrid.registry.verify_queue import FairSlots
from idlegrid.registry.writer import ChangeWriter

log = structlog.get_logger("registry")

LINK_MOVES_MAX = 3  # verification runs again at most this often when the link moves


class Lifecycle:
    def __init__(self, *, view: LiveView, hub: WatchHub, writer: ChangeWriter, verifier: Verifier,
                 settings: RegistrySettings, reach: Reach, catalog: Catalog) -> None:
        self._view = view
        self._catalog = catalog
        self._reach = reach
        self._hub = hub
        self._writer = writer
        self._verifier = verifier
        self._skip_verification = settings.skip_verification
        self._slots = FairSlots(total_max=settings.verifications_max,
                                per_key_max=settings.verifications_per_provider_max)
        self._verifications: dict[bytes, asyncio.Task] = {}

    async def close(self) -> None:
        """Cancels the verifications in progress."""
        tasks = list(self._verifications.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ state changes

    def admit(self, node: LiveNode) -> None:
        """A new node, already written, enters the live view and is published."""
        node.revision = self._hub.next_revision()
        self._view.add(node)
        self._hub.publish(node.revision, pb.DELTA_KIND_UPSERTED, node.to_proto())

    def apply(self, node: LiveNode, state: int, reason: int, detail: str, *, revoke: bool = False) -> float:
        """Changes the state in memory and publishes it (no await): returns the time.
        The caller writes it (see :meth:`transition`)."""
        states.check(node.state, state, reason)
        assert not (state == states.READY and node.linked and node.link is None), "a linked node READY without a link"
        at = time.time()
        node.state, node.reason, node.detail = state, reason, detail[:DETAIL_CHARS_MAX]
        node.state_changed_at = at
        if revoke:
            node.token_digest = None
        node.revision = self._hub.next_revision()
        node.changed()
        self._view.track(node)
        self._hub.publish(node.revision, pb.DELTA_KIND_UPSERTED, node.to_proto())
        return at

    def publish(self, node: LiveNode) -> None:
        """A change that is not a state change (the node's link): watchers
        see the node again; nothing is written."""
        node.revision = self._hub.next_revision()
        node.changed()
        self._hub.publish(node.revision, pb.DELTA_KIND_UPSERTED, node.to_proto())

    def room(self, n: int = 1) -> None:
        """ResourceExhausted when ``n`` transitions could not be written now."""
        self._writer.room(n)

    def transition(self, node: LiveNode, state: int, reason: int, detail: str = "", *, revoke: bool = False,
                   verification: tuple[tuple[str, str, bool, int], ...] = ()) -> asyncio.Future:
        """Applies a change and hands it to the writer; the future resolves
        once it is written. ResourceExhausted, changing nothing, when the
        writer has no room."""
        self._writer.room()
        at = self.apply(node, state, reason, detail, revoke=revoke)
        return self._writer.submit(Change(node_id=node.id, state=state, reason=reason, detail=node.detail, at=at,
                                          revoke_token=revoke, verification=verification))

    async def drain(self, node: LiveNode, *, requested_by: str) -> None:
        """READY (or PAUSED) → DRAINING; a node already draining stays as it is."""
        if node.state == states.DRAINING:
            return
        if node.state not in (states.READY, states.PAUSED):
            raise FailedPrecondition(f"the node is {states.NAMES[node.state]}; only a ready node drains "
                                     "(deregister it instead)")
        await self.transition(node, states.DRAINING, pb.STATE_REASON_DRAIN_REQUESTED, f"requested by {requested_by}")

    async def deregister(self, node: LiveNode, *, requested_by: str) -> None:
        """Any state → OFFLINE (deregistered), and the node's token is revoked.
        A SUSPENDED node stays SUSPENDED; only its token is revoked."""
        written = self.end_now(node, f"requested by {requested_by}")
        if written is not None:
            await written

    def end_now(self, node: LiveNode, detail: str) -> asyncio.Future | None:
        """Takes the node OFFLINE (deregistered) and revokes its token, or for a
        SUSPENDED node only revokes its token; None when nothing changes. The
        future resolves once written."""
        if node.state == states.SUSPENDED:
            if node.token_digest is None:
                return None
            return self.transition(node, states.SUSPENDED, node.reason, node.detail, revoke=True)
        if node.state == states.OFFLINE and node.reason == pb.STATE_REASON_DEREGISTERED:
            return None
        self.cancel_verification(node)
        return self.transition(node, states.OFFLINE, pb.STATE_REASON_DEREGISTERED, detail, revoke=True)

    def suspend(self, node: LiveNode, reason: int, detail: str) -> asyncio.Future | None:
        """Any state → SUSPENDED (no change for a node already suspended)."""
        if node.state == states.SUSPENDED:
            return None
        self.cancel_verification(node)
        return self.transition(node, states.SUSPENDED, reason, detail)

    def unsuspend(self, node: LiveNode, detail: str) -> asyncio.Future | None:
        """SUSPENDED → VERIFYING, and verification again (no change for a node
        that is not suspended)."""
        if node.state != states.SUSPENDED:
            return None
        written = self.transition(node, states.VERIFYING, pb.STATE_REASON_UNSUSPENDED, detail)
        self.start_verification(node)
        return written

    async def pause(self, node: LiveNode, *, paused: bool, detail: str) -> None:
        """READY → PAUSED (PAUSED → PAUSED: a new detail), or PAUSED → READY.
        Resuming a node that is not paused changes nothing."""
        if not paused:
            if node.state == states.PAUSED:
                await self.transition(node, states.READY, pb.STATE_REASON_RESUMED, detail or "the GPU is idle again")
            return
        detail = detail or "paused by its owner"
        if node.state == states.PAUSED and node.detail == detail:
            return
        if node.state not in (states.READY, states.PAUSED):
            raise FailedPrecondition(f"the node is {states.NAMES[node.state]}; only a ready node pauses")
        await self.transition(node, states.PAUSED, pb.STATE_REASON_PAUSED, detail)

    # ------------------------------------------------------------ verification

    def verifying(self, node: LiveNode) -> bool:
        """A verification of the node is queued or running."""
        return node.id in self._verifications

    def start_verification(self, node: LiveNode) -> None:
        task = asyncio.create_task(self._verify(node, node.generation), name="registry-verify")
        self._verifications[node.id] = task

        def forget(t: asyncio.Task) -> None:
            if self._verifications.get(node.id) is t:
                del self._verifications[node.id]

        task.add_done_callback(forget)

    def cancel_verification(self, node: LiveNode) -> None:
        task = self._verifications.pop(node.id, None)
        if task is not None:
            task.cancel()

    async def _verify(self, node: LiveNode, generation: int) -> None:
        try:
            async with self._slots.slot(node.provider.id):
                if node.generation != generation or not _waits_for_verification(node):
                    return
                if self._reach.target(node) is None:
                    if node.state == states.VERIFYING:  # unsuspended while it holds no link
                        await self.transition(node, states.OFFLINE, pb.STATE_REASON_LINK_LOST,
                                              "unsuspended while it holds no link: verified when it links again")
                    return  # a linked node without its link yet: AttachLink starts it again
                if node.state != states.VERIFYING:
                    await self.transition(node, states.VERIFYING, pb.STATE_REASON_VERIFICATION_STARTED)
                for _ in range(LINK_MOVES_MAX):
                    link, target = node.link, self._reach.target(node)
                    if target is None:
                        return  # the link dropped: DetachLink took the node OFFLINE
                    result = await self._verifier.verify(target, list(node.offers), self._catalog.snapshot())
                    if node.generation != generation or node.state != states.VERIFYING:
                        return  # the lease ran out, the link dropped or the node registered again
                    if node.link is link:
                        break
                    # The link moved to another relay meanwhile: verify through the new one.
                else:
                    result.ok, result.detail = False, "the node's link kept moving during verification"
            if not result.ok:
                log.warning("registry.verification_failed", node_id=str(uuid.UUID(bytes=node.id)),
                            detail=result.detail)
                await self.transition(node, states.OFFLINE, pb.STATE_REASON_VERIFICATION_FAILED, result.detail)
                return
            rows = []
            for o in node.offers:  # an offer the catalog dropped meanwhile is not verified
                v = Verification(verified=self._catalog.conforms(o),
                                 canary_latency_us=result.latency_us.get((o.name, o.version), 0))
                node.verification[(o.name, o.version)] = v
                rows.append((o.name, o.version, v.verified, v.canary_latency_us))
            reason = pb.STATE_REASON_VERIFICATION_SKIPPED if self._skip_verification else pb.STATE_REASON_VERIFIED
            await self.transition(node, states.READY, reason, result.detail, verification=tuple(rows))
        except asyncio.CancelledError:
            raise
        except IdlegridError as e:
            log.error("registry.verification_not_recorded", node_id=str(uuid.UUID(bytes=node.id)), error=e.message)


def _waits_for_verification(node: LiveNode) -> bool:
    """JOINING, OFFLINE because its link was lost (a new link attached), or
    VERIFYING because an operator lifted its suspension."""
    return (node.state == states.JOINING
            or (node.state == states.OFFLINE and node.reason == pb.STATE_REASON_LINK_LOST)
            or (node.state == states.VERIFYING and node.reason == pb.STATE_REASON_UNSUSPENDED))
