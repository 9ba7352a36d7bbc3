"""The WatchNodes fan-out: one ordered stream of node changes with a
revision that grows by one per change, a ring buffer of the last changes for
watchers that resume, and one bounded queue per watcher.

Everything here is synchronous: a change is numbered, buffered and queued to
every watcher with no await in between, so a snapshot taken in the same step
as a subscription is exactly the state at the current revision, and every
later change reaches the watcher's queue.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable

from idlegrid.common.errors import ResourceExhausted, Unavailable
from idlegrid.registry.v1 import registry_pb2 as pb

SNAPSHOT_CHUNK_MAX = 1_000
LOAD_CHUNK_MAX = 1_000


class Subscription:
    """One watcher's subscription: its bounded queue of messages. Overflow
    closes it: a slow watcher never slows the registry; it reconnects and
    resumes or takes a fresh snapshot."""

    __slots__ = ("_items", "_wake", "_max", "overflowed", "wants_load", "closed")

    def __init__(self, *, queue_max: int, wants_load: bool) -> None:
        self._items: deque[pb.WatchNodesResponse] = deque()
        self._wake = asyncio.Event()
        self._max = queue_max
        self.overflowed = False
        self.wants_load = wants_load
        self.closed = False  # the registry is stopping

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def offer(self, message: pb.WatchNodesResponse) -> None:
        if self.overflowed:
            return
        if len(self._items) >= self._max:
            self.overflowed = True
            self._items.clear()
        else:
            self._items.append(message)
        self._wake.set()

    async def next(self) -> pb.WatchNodesResponse:
        while not self._items:
            if self.closed:
                raise Unavailable("the registry is stopping; resume with the last revision received")
            if self.overflowed:
                raise ResourceExhausted("watcher fell too far behind; resume with the last revision received")
            self._wake.clear()
            await self._wake.wait()
        return self._items.popleft()


class WatchHub:
    def __init__(self, *, buffer_max: int, watcher_queue_max: int, watchers_max: int,
                 snapshot_reuse_s: float = 0.0) -> None:
        """``snapshot_reuse_s``: watchers that subscribe within this long of one
        another, with no change in between, share one snapshot (its loads are
        that old at most): many schedulers reconnecting at once cost one build."""
        self.epoch = os.urandom(16)
        self.revision = 0
        self._ring: deque[tuple[int, pb.WatchNodesResponse]] = deque(maxlen=buffer_max)
        self._watchers: set[Subscription] = set()
        self._queue_max = watcher_queue_max
        self._watchers_max = watchers_max
        self._snapshot_reuse_s = snapshot_reuse_s
        self._snapshot: tuple[int, float, list[pb.WatchNodesResponse]] | None = None
        self._closed = False

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def next_revision(self) -> int:
        self.revision += 1
        return self.revision

    def publish(self, revision: int, kind: int, node: pb.Node) -> None:
        """Sends one change (the node's full record, or its removal) to everyone."""
        assert revision == self.revision, "changes are published in revision order"
        msg = pb.WatchNodesResponse(epoch=self.epoch, delta=pb.NodeDelta(revision=revision, kind=kind, node=node))
        self._ring.append((revision, msg))
        for w in self._watchers:
            w.offer(msg)

    def publish_loads(self, loads: list[pb.NodeLoad]) -> None:
        if not loads or not any(w.wants_load for w in self._watchers):
            return
        msgs = [pb.WatchNodesResponse(epoch=self.epoch, load=pb.LoadReport(loads=loads[i:i + LOAD_CHUNK_MAX]))
                for i in range(0, len(loads), LOAD_CHUNK_MAX)]
        for w in self._watchers:
            if w.wants_load:
                for m in msgs:
                    w.offer(m)

    def subscribe(self, *, resume_epoch: bytes, resume_revision: int, wants_load: bool,
                  snapshot: Callable[[], list[pb.Node]]) -> tuple[Subscription, list[pb.WatchNodesResponse]]:
        """A new subscription and what it must be sent first: the buffered changes
        after ``resume_revision`` when they are all still here, else a
        snapshot (in chunks) at the current revision."""
        if self._closed:
            raise Unavailable("the registry is stopping; watch another replica")
        if len(self._watchers) >= self._watchers_max:
            raise ResourceExhausted(f"too many watchers (at most {self._watchers_max})")
        first = self._replay(resume_epoch, resume_revision)
        if first is None:
            first = self._snapshot_messages(snapshot)
        w = Subscription(queue_max=self._queue_max, wants_load=wants_load)
        self._watchers.add(w)
        return w, first

    def _snapshot_messages(self, snapshot: Callable[[], list[pb.Node]]) -> list[pb.WatchNodesResponse]:
        now = time.monotonic()
        cached = self._snapshot
        if cached is not None and cached[0] == self.revision and now - cached[1] <= self._snapshot_reuse_s:
            return cached[2]
        nodes = snapshot()
        chunks = [nodes[i:i + SNAPSHOT_CHUNK_MAX] for i in range(0, len(nodes), SNAPSHOT_CHUNK_MAX)] or [[]]
        messages = [pb.WatchNodesResponse(epoch=self.epoch, snapshot=pb.Snapshot(
            revision=self.revision, nodes=chunk, last=i == len(chunks) - 1)) for i, chunk in enumerate(chunks)]
        self._snapshot = (self.revision, now, messages)
        return messages

    def unsubscribe(self, w: Subscription) -> None:
        self._watchers.discard(w)

    def close(self) -> None:
        """Ends every watch (UNAVAILABLE, once its queue is sent): a stopping
        registry does not wait out its grace for streams that never end; the
        watchers resume on another replica."""
        self._closed = True
        for w in self._watchers:
            w.close()

    def _replay(self, epoch: bytes, revision: int) -> list[pb.WatchNodesResponse] | None:
        if epoch != self.epoch or revision > self.revision:
            return None
        oldest = self._ring[0][0] if self._ring else self.revision + 1
        if revision < oldest - 1:
            return None  # some changes after `revision` are no longer buffered
        skip = revision - (oldest - 1)
        return [m for _, m in list(self._ring)[skip:]]
