"""How the marketplace reaches a node's Triton: through the relay that holds
the node's link (the default), or at an operator-enabled direct endpoint.

Callers speak the standard KServe v2 gRPC API (tritonclient) to the address
``target()`` returns, with its metadata; the relay forwards the call down the
node's link (see proto/idlegrid/relay/v1/relay.proto)."""

from __future__ import annotations

from idlegrid.registry.v1 import registry_pb2 as rpb

NODE_ID_HEADER = "idlegrid-node-id"  # the node a call through a relay is for (hex)
REPLY_BYTES_MAX_HEADER = "idlegrid-reply-bytes-max"  # bound on a call's total reply bytes
REPLIES_MAX_HEADER = "idlegrid-replies-max"  # bound on the replies of a streaming call
NODE_TOKEN_HEADER = "x-idlegrid-node-token"  # a relay proving a node to the registry


class NoRoute(Exception):
    """The node holds no link and has no direct endpoint."""


def target(node: rpb.Node) -> tuple[str, dict[str, str]]:
    """(address, metadata) for a KServe call to ``node``'s Triton."""
    if node.HasField("link") and node.link.relay_addr:
        return node.link.relay_addr, {NODE_ID_HEADER: node.node_id.hex()}
    if node.endpoint:
        return node.endpoint, {}
    raise NoRoute(f"node {node.node_id.hex()} holds no link")


def bounds(*, reply_bytes_max: int = 0, replies_max: int = 0) -> dict[str, str]:
    """Metadata that bounds what the node may send for one call."""
    out = {}
    if reply_bytes_max:
        out[REPLY_BYTES_MAX_HEADER] = str(reply_bytes_max)
    if replies_max:
        out[REPLIES_MAX_HEADER] = str(replies_max)
    return out
