"""ReportCheck (the scheduler): a spot check's verdict on a job, or a job
whose node-reported token counts disagreed with the platform's count.

Each (node, job, kind) counts once: the verdict is recorded (table
node_checks) before it changes the node's reputation (reputation.py), and a
repeated report changes nothing. A failed spot check suspends the node
(STATE_REASON_CHECK_FAILED; its detail names the job and the verdict) and
puts its provider under review: its other nodes are sampled harder. The node
goes out to watchers with its new reputation."""

from __future__ import annotations

import uuid

import asyncpg
import structlog

from idlegrid.common.errors import NotFound
from idlegrid.registry import trust_store, validate
from idlegrid.registry.live import LiveView
from idlegrid.registry.records import LiveNode
from idlegrid.registry.reputation import reason_for
from idlegrid.registry.transitions import Lifecycle
from idlegrid.registry.v1 import registry_pb2 as pb

log = structlog.get_logger("registry")


class Checks:
    def __init__(self, *, pool: asyncpg.Pool, view: LiveView, lifecycle: Lifecycle) -> None:
        self._pool = pool
        self._view = view
        self._lifecycle = lifecycle

    async def report(self, r: pb.ReportCheckRequest) -> LiveNode:
        validate.check_report(r)
        node = self._view.nodes.get(r.node_id)
        if node is None:
            raise NotFound(f"no node {uuid.UUID(bytes=r.node_id)}")
        self._lifecycle.room()
        if not await trust_store.insert_check(self._pool, r):
            return node  # reported before
        reason = reason_for(r.kind, r.passed, r.job_id, r.detail)
        node.reputation.record(r.kind, r.passed, reason)
        if r.kind != pb.CHECK_KIND_SPOT_CHECK or r.passed:
            self._lifecycle.publish(node)
            return node
        log.warning("registry.spot_check_failed", node_id=str(uuid.UUID(bytes=node.id)), job_id=r.job_id.hex(),
                    detail=r.detail)
        p = node.provider
        if not p.under_review:
            async with self._pool.acquire() as conn:
                await trust_store.set_provider_flags(conn, p.id, under_review=True)
            p.under_review = True
            for n in self._view.nodes.values():
                if n.provider is p and n is not node:
                    self._lifecycle.publish(n)  # sampled harder now
        written = self._lifecycle.suspend(node, pb.STATE_REASON_CHECK_FAILED, reason)
        if written is None:
            self._lifecycle.publish(node)  # already suspended: its reputation changed
        else:
            await written
        return node
