"""The live node view forgets a node's quarantine when the registry verifies
it again (READY after another state, or READY on a new link): a node that
crashed and came back is routable at once, not after the quarantine."""

from __future__ import annotations

import time

from idlegrid.common.node_view import FAILURES_TO_QUARANTINE, NodeTable
from idlegrid.registry.v1 import registry_pb2 as rpb

NODE_ID = b"n" * 16


def _node(state: int, link_id: bytes = b"l" * 16) -> rpb.Node:
    return rpb.Node(node_id=NODE_ID, state=state, link=rpb.NodeLink(relay_addr="r:1", link_id=link_id))


def _quarantined(table: NodeTable) -> bool:
    info = table.nodes[NODE_ID]
    for _ in range(FAILURES_TO_QUARANTINE):
        table.failed_once(info)
    return not table.nodes[NODE_ID].available(time.monotonic())


def test_a_node_verified_again_after_going_offline_leaves_quarantine():
    table = NodeTable()
    table.upsert(_node(rpb.NODE_STATE_READY))
    assert _quarantined(table)
    table.upsert(_node(rpb.NODE_STATE_READY))  # a mere update (load, revision): still out
    assert not table.nodes[NODE_ID].available(time.monotonic())
    table.upsert(_node(rpb.NODE_STATE_OFFLINE))
    table.upsert(_node(rpb.NODE_STATE_READY))
    assert table.nodes[NODE_ID].available(time.monotonic())
    assert table.nodes[NODE_ID].failed == FAILURES_TO_QUARANTINE  # its record stays


def test_a_node_ready_on_a_new_link_leaves_quarantine():
    table = NodeTable()
    table.upsert(_node(rpb.NODE_STATE_READY))
    assert _quarantined(table)
    table.upsert(_node(rpb.NODE_STATE_READY, link_id=b"m" * 16))
    assert table.nodes[NODE_ID].available(time.monotonic())
