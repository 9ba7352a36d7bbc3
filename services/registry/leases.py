"""Leases: a node is alive while it heartbeats.

Each node that is not OFFLINE holds a lease of ``lease_s`` (``lease_intervals``
heartbeat intervals), renewed by every heartbeat. Heartbeats are the hot path
and touch only memory: they renew the lease and keep the node's load (soft
state, never written). Three background loops do the rest:

- the sweep, every ``sweep_interval_ms``: nodes whose lease ran out go
  OFFLINE (reason LEASE_EXPIRED), SUSPENDED ones aside (only an operator
  moves them); when the writer is full, the rest wait for the next sweep;
- eviction, every EVICT_EVERY_S: OFFLINE nodes past ``offline_retention_s``
  leave the live view (their rows stay) and their tokens stop working;
- load reports, every ``load_report_interval_ms``: the loads heartbeated
  since the last report go to the watchers that want them, coalesced.

Deadlines are on the event loop's clock (``loop.time()``).
"""

from __future__ import annotations

import asyncio
import time

import structlog

from idlegrid.common.errors import ResourceExhausted
from idlegrid.registry import states
from idlegrid.registry.hub import WatchHub
from idlegrid.registry.live import LiveView
from idlegrid.registry.records import LiveNode
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.transitions import Lifecycle
from idlegrid.registry.v1 import registry_pb2 as pb

log = structlog.get_logger("registry")

EVICT_EVERY_S = 10.0


class Leases:
    def __init__(self, *, view: LiveView, hub: WatchHub, lifecycle: Lifecycle, settings: RegistrySettings) -> None:
        self._view = view
        self._hub = hub
        self._lifecycle = lifecycle
        self._settings = settings
        self._lease_s = settings.lease_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        self.heartbeats_total = 0
        self.sweeps = 0

    def open(self) -> None:
        """Binds the leases to the running loop, whose clock they use."""
        self._loop = asyncio.get_running_loop()

    def start(self) -> None:
        """Starts the sweep, eviction and load reports."""
        self._tasks = [asyncio.create_task(self._sweep(), name="registry-sweep"),
                       asyncio.create_task(self._report_loads(), name="registry-loads")]
        for t in self._tasks:
            t.add_done_callback(_died_loudly)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def renew(self, node: LiveNode) -> None:
        """A fresh lease, from now."""
        node.lease_deadline = self._loop.time() + self._lease_s

    def heartbeat(self, node: LiveNode, load: pb.NodeLoad) -> None:
        """The hot path: memory only."""
        node.load = load
        node.load_at = time.time()
        # Renewed in every state: only live nodes' leases are checked, and a
        # node OFFLINE for a lost link that links again starts with a fresh one.
        node.lease_deadline = self._loop.time() + self._lease_s
        self._view.dirty_loads.add(node)
        self.heartbeats_total += 1

    async def _sweep(self) -> None:
        s = self._settings
        interval_s = s.sweep_interval_ms / 1000
        next_evict = self._loop.time() + EVICT_EVERY_S
        lease_text = (f"no heartbeat for {s.lease_s:g} s ({s.lease_intervals} "
                      f"intervals of {s.heartbeat_interval_ms} ms)")
        while True:
            await asyncio.sleep(interval_s)
            self.sweeps += 1
            now = self._loop.time()
            # A SUSPENDED node stays SUSPENDED whether it heartbeats or not.
            expired = [n for n in self._view.live if n.lease_deadline < now and n.state != states.SUSPENDED]
            written = []
            for n in expired:
                try:
                    self._lifecycle.cancel_verification(n)
                    written.append(self._lifecycle.transition(n, states.OFFLINE, pb.STATE_REASON_LEASE_EXPIRED,
                                                              lease_text))
                except ResourceExhausted:
                    break  # the rest on the next sweep
            if expired:
                log.info("registry.leases_expired", nodes=len(written))
            if now >= next_evict:
                next_evict = now + EVICT_EVERY_S
                self._evict(time.time() - s.offline_retention_s)
            if written:
                await asyncio.gather(*written, return_exceptions=True)

    def _evict(self, before: float) -> None:
        """OFFLINE nodes past retention leave the live view (their rows stay)."""
        view = self._view
        gone = [n for n in view.nodes.values()
                if n.state == states.OFFLINE and n.state_changed_at < before and n.id not in view.registering]
        for n in gone:
            view.remove(n)
            n.token_digest = None  # streams holding it stop
            self._hub.publish(self._hub.next_revision(), pb.DELTA_KIND_REMOVED, pb.Node(node_id=n.id))
        if gone:
            log.info("registry.nodes_evicted", nodes=len(gone))

    async def _report_loads(self) -> None:
        interval_s = self._settings.load_report_interval_ms / 1000
        view = self._view
        while True:
            await asyncio.sleep(interval_s)
            dirty, view.dirty_loads = view.dirty_loads, set()
            if dirty and self._hub.watchers:
                self._hub.publish_loads([n.load_proto() for n in dirty if n.load is not None])


def _died_loudly(task: asyncio.Task) -> None:
    """A background loop only ends when cancelled; anything else is a bug
    (a broken invariant, say) and must not pass quietly."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("registry.background_task_died", task=task.get_name(), exc_info=task.exception())
