"""Banned direct-endpoint hosts (SetEndpointBanned): registration naming one
is refused (PERMISSION_DENIED, reason endpoint_banned), whether by the name
the node registers or the address it resolves to and is pinned at.

Hosts are kept normalised: DNS names in lower case without a trailing dot,
IP literals in their canonical form without brackets."""

from __future__ import annotations

import ipaddress

from idlegrid.common.errors import InvalidArgument, PermissionDenied
from idlegrid.registry import direct, validate
from idlegrid.registry.records import LiveNode

HOST_CHARS_MAX = 255


def normalize(host: str) -> str:
    """The canonical form of a DNS name or IP literal; INVALID_ARGUMENT otherwise."""
    if not 1 <= len(host) <= HOST_CHARS_MAX:
        raise InvalidArgument(f"host must be 1..{HOST_CHARS_MAX} chars")
    bare = host.removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    try:
        validate.endpoint(f"{host}:1")
    except InvalidArgument:
        raise InvalidArgument(f"host must be a DNS name or an IP literal, got {host[:80]!r}") from None
    return host.rstrip(".").lower()


def host_of(endpoint: str) -> str:
    """The normalised host of a ``host:port`` that validation accepted."""
    return normalize(direct.split(endpoint)[0])


class Bans:
    def __init__(self) -> None:
        self.hosts: set[str] = set()

    def check(self, host: str) -> None:
        if host and host in self.hosts:
            raise PermissionDenied(f"endpoint host {host} is banned on this marketplace", reason="endpoint_banned")

    @staticmethod
    def on(node: LiveNode, host: str) -> bool:
        """Whether ``node`` is reached at ``host`` (as it registered it, or pinned)."""
        return bool(node.endpoint) and host in (node.endpoint_host, host_of(node.endpoint))
