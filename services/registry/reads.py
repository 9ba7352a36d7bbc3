"""Reads of the live view: one node, a page of nodes, a snapshot.

Reads never touch the database: the live view is authoritative. Pages are
ordered by node id and the page token is the last id of the page before, so
a node that comes or goes between two pages shifts nothing.
"""

from __future__ import annotations

import bisect
import uuid

from idlegrid.common.errors import InvalidArgument, NotFound
from idlegrid.registry import states, validate
from idlegrid.registry.live import LiveView
from idlegrid.registry.records import LiveNode
from idlegrid.registry.v1 import registry_pb2 as pb


def get(view: LiveView, node_id: bytes) -> LiveNode:
    validate.node_id(node_id)
    node = view.nodes.get(node_id)
    if node is None:
        raise NotFound(f"no node {uuid.UUID(bytes=node_id)}")
    return node


def page(view: LiveView, request: pb.ListNodesRequest) -> tuple[list[LiveNode], bytes]:
    """The nodes of one ListNodes page, and the token of the next page (empty
    after the last)."""
    size = validate.page_size(request.page_size)
    if request.page_token:
        validate.node_id(request.page_token, "page_token")
    if request.provider_id:
        validate.node_id(request.provider_id, "provider_id")
    wanted_states = set(request.states)
    if wanted_states - states.NAMES.keys():
        raise InvalidArgument("states holds an unknown NodeState")
    ids = view.sorted_ids()
    start = bisect.bisect_right(ids, request.page_token) if request.page_token else 0
    out: list[LiveNode] = []
    for node_id in ids[start:]:
        n = view.nodes.get(node_id)
        if n is None or not _matches(n, request.model, wanted_states, request.provider_id):
            continue
        if len(out) == size:
            return out, out[-1].id  # there is at least one more
        out.append(n)
    return out, b""


def snapshot(view: LiveView) -> list[pb.Node]:
    return [n.to_proto() for n in view.nodes.values()]


def _matches(n: LiveNode, model: str, wanted_states: set[int], provider_id: bytes) -> bool:
    if wanted_states and n.state not in wanted_states:
        return False
    if provider_id and n.provider.id != provider_id:
        return False
    return not model or n.serves(model)
