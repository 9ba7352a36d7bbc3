"""A live view of the registry's nodes, fed by its WatchNodes stream (a
snapshot, then ordered deltas; resumed after a disconnect), plus what the
holder learns itself: in-flight jobs, a latency moving average and each
node's reliability record. A client of the registry's public API, shared by
the scheduler (routing) and the gateway (the model list)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import grpc
import structlog

from idlegrid.registry.v1 import registry_pb2 as rpb

log = structlog.get_logger("node_view")

LATENCY_EWMA_ALPHA = 0.2
FAILURES_TO_QUARANTINE = 3
QUARANTINE_S = 30.0
RECONNECT_S_MAX = 5.0


@dataclass(slots=True)
class NodeInfo:
    node: rpb.Node
    models: dict[str, rpb.Model]  # verified models by name
    in_flight: int = 0  # this scheduler's jobs on the node now
    reported_in_flight: int = 0
    queue_depth: int = 0
    latency_ms: float | None = None  # moving average of this scheduler's observations
    completed: int = 0
    failed: int = 0
    mismatches: int = 0  # token-count disagreements with the platform's count
    consecutive_failures: int = 0
    quarantined_until: float = 0.0
    capacity: int = field(default=4)

    @property
    def node_id(self) -> bytes:
        return self.node.node_id

    def reliability(self) -> float:
        """Share of good jobs, with a prior of 4 good jobs so new nodes start fair."""
        bad = self.failed + self.mismatches
        return (self.completed + 4) / (self.completed + bad + 4)

    def available(self, now: float) -> bool:
        return self.node.state == rpb.NODE_STATE_READY and now >= self.quarantined_until


def _came_back(old: rpb.Node, new: rpb.Node) -> bool:
    """READY again after being something else, or READY on a new link."""
    if new.state != rpb.NODE_STATE_READY:
        return False
    return old.state != rpb.NODE_STATE_READY or old.link.link_id != new.link.link_id


def _info(node: rpb.Node, old: NodeInfo | None) -> NodeInfo:
    models = {m.offer.name: m for m in node.models if m.verified}
    cores = max(1, node.hardware.cpu_cores)
    gpus = sum(g.count for g in node.hardware.gpus)
    capacity = max(2, 4 * gpus) if gpus else max(1, cores // 2)
    info = NodeInfo(node=node, models=models, capacity=capacity)
    if old is not None:  # keep what this scheduler learned
        for f in ("in_flight", "latency_ms", "completed", "failed", "mismatches",
                  "consecutive_failures", "quarantined_until"):
            setattr(info, f, getattr(old, f))
        if _came_back(old.node, node):
            # The registry has just verified the node again (a new link, a new
            # registration): the failures that quarantined it are its past.
            info.consecutive_failures, info.quarantined_until = 0, 0.0
    if node.HasField("load"):
        info.reported_in_flight, info.queue_depth = node.load.in_flight, node.load.queue_depth
    return info


class NodeTable:
    def __init__(self) -> None:
        self.nodes: dict[bytes, NodeInfo] = {}
        self.by_model: dict[str, set[bytes]] = {}
        self.revision = 0
        self.epoch = b""
        self.synced = asyncio.Event()

    # -- updates from the registry ------------------------------------------

    def upsert(self, node: rpb.Node) -> None:
        old = self.nodes.get(node.node_id)
        if old is not None:
            for name in old.models:
                self.by_model.get(name, set()).discard(node.node_id)
        info = _info(node, old)
        self.nodes[node.node_id] = info
        for name in info.models:
            self.by_model.setdefault(name, set()).add(node.node_id)

    def remove(self, node_id: bytes) -> None:
        old = self.nodes.pop(node_id, None)
        if old is not None:
            for name in old.models:
                self.by_model.get(name, set()).discard(node_id)

    def load(self, load: rpb.NodeLoad) -> None:
        info = self.nodes.get(load.node_id)
        if info is not None:
            info.reported_in_flight, info.queue_depth = load.in_flight, load.queue_depth

    def replace_all(self, nodes: list[rpb.Node]) -> None:
        keep = {n.node_id for n in nodes}
        for nid in list(self.nodes):
            if nid not in keep:
                self.remove(nid)
        for n in nodes:
            self.upsert(n)

    # -- what the scheduler learns ------------------------------------------

    def serving(self, model: str) -> list[NodeInfo]:
        return [self.nodes[i] for i in self.by_model.get(model, ())]

    def knows_model(self, model: str) -> bool:
        return bool(self.by_model.get(model))

    @staticmethod
    def succeeded(info: NodeInfo, latency_ms: float) -> None:
        info.completed += 1
        info.consecutive_failures = 0
        info.latency_ms = latency_ms if info.latency_ms is None else (
            (1 - LATENCY_EWMA_ALPHA) * info.latency_ms + LATENCY_EWMA_ALPHA * latency_ms)

    @staticmethod
    def failed_once(info: NodeInfo) -> None:
        info.failed += 1
        info.consecutive_failures += 1
        if info.consecutive_failures >= FAILURES_TO_QUARANTINE:
            info.quarantined_until = time.monotonic() + QUARANTINE_S
            log.warning("node.quarantined", node_id=info.node_id.hex(), seconds=QUARANTINE_S,
                        failures=info.consecutive_failures)


class RegistryWatcher:
    """Keeps a NodeTable in sync with the registry (reconnects and resumes)."""

    def __init__(self, table: NodeTable, registry_stub) -> None:
        self._table = table
        self._stub = registry_stub
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="registry-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._follow()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                log.warning("watch.disconnected", code=e.code().name, details=e.details())
            except Exception as e:  # noqa: BLE001 - reconnect whatever broke
                log.warning("watch.failed", error=repr(e))
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(RECONNECT_S_MAX, backoff * 2)

    async def _follow(self) -> None:
        t = self._table
        req = rpb.WatchNodesRequest(resume_epoch=t.epoch, resume_revision=t.revision)
        snapshot: list[rpb.Node] = []
        async for msg in self._stub.WatchNodes(req):
            kind = msg.WhichOneof("event")
            if kind == "snapshot":
                snapshot.extend(msg.snapshot.nodes)
                if msg.snapshot.last:
                    t.replace_all(snapshot)
                    snapshot = []
                    t.epoch, t.revision = msg.epoch, msg.snapshot.revision
                    t.synced.set()
            elif kind == "delta":
                d = msg.delta
                if d.kind == rpb.DELTA_KIND_REMOVED:
                    t.remove(d.node.node_id)
                else:
                    t.upsert(d.node)
                t.epoch, t.revision = msg.epoch, d.revision
                t.synced.set()
            elif kind == "load":
                for load in msg.load.loads:
                    t.load(load)
