"""The live view: every provider and node the registry holds in memory, and
the indexes kept over them.

The live view is authoritative while the registry runs; the tables follow it
through the ChangeWriter. Every part of the registry (registration,
transitions, leases, reads) works on this one object, and only through the
methods below does a node enter or leave it, so the indexes cannot drift
from ``nodes``.
"""

from __future__ import annotations

from idlegrid.registry import states
from idlegrid.registry.records import LiveNode, Provider


class LiveView:
    def __init__(self) -> None:
        self.providers: dict[bytes, Provider] = {}
        self.nodes: dict[bytes, LiveNode] = {}
        self.live: set[LiveNode] = set()          # not OFFLINE: their leases are checked
        self.dirty_loads: set[LiveNode] = set()   # heartbeated since the last load report
        self.registering: set[bytes] = set()      # node ids with a registration in progress
        self._sorted_ids: list[bytes] | None = None

    def add(self, node: LiveNode) -> None:
        self.nodes[node.id] = node
        self._sorted_ids = None
        self.track(node)

    def track(self, node: LiveNode) -> None:
        """Keeps ``node`` in the live set exactly while it is not OFFLINE
        (called after every state change)."""
        if node.state == states.OFFLINE:
            self.live.discard(node)
        else:
            self.live.add(node)

    def remove(self, node: LiveNode) -> None:
        """The node leaves memory (its rows stay in the database)."""
        del self.nodes[node.id]
        self.live.discard(node)
        self.dirty_loads.discard(node)
        self._sorted_ids = None

    def sorted_ids(self) -> list[bytes]:
        """Every node id in order (ListNodes pages over it), rebuilt only
        after a node entered or left."""
        if self._sorted_ids is None:
            self._sorted_ids = sorted(self.nodes)
        return self._sorted_ids
