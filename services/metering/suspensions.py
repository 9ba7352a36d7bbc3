"""Which nodes the registry has SUSPENDED, learned by following its
WatchNodes stream (the shared idlegrid.common.node_view client, as the
scheduler and the gateway do). Their unreleased earnings are voided and
refunded; until the first snapshot arrives, nothing may be released."""

from __future__ import annotations

from collections.abc import Iterable

from idlegrid.common.node_view import NodeTable, RegistryWatcher
from idlegrid.registry.v1 import registry_pb2 as rpb

_WHY = {rpb.STATE_REASON_CHECK_FAILED: "spot check failed", rpb.STATE_REASON_SUSPENDED: "suspended by an operator"}


def suspended_nodes(nodes: Iterable[rpb.Node]) -> dict[str, str]:
    """Node id (hex, as usage records name nodes) -> why, for each SUSPENDED node."""
    out = {}
    for n in nodes:
        if n.state == rpb.NODE_STATE_SUSPENDED:
            why = _WHY.get(n.state_reason, "suspended")
            out[n.node_id.hex()] = f"{why}: {n.state_detail}" if n.state_detail else why
    return out


class Suspensions:
    """The registry's suspended nodes; with no registry stub (tests of
    metering alone), none, and always synced."""

    def __init__(self, registry_stub=None) -> None:
        self._table = NodeTable()
        self._watcher = RegistryWatcher(self._table, registry_stub) if registry_stub is not None else None

    def start(self) -> None:
        if self._watcher is not None:
            self._watcher.start()

    async def stop(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()

    @property
    def synced(self) -> bool:
        """Whether the registry's view has arrived (releases wait for it)."""
        return self._watcher is None or self._table.synced.is_set()

    def suspended(self) -> dict[str, str]:
        return suspended_nodes(info.node for info in self._table.nodes.values())
