"""How the registry reaches a node's Triton for verification: the same way
the marketplace's dispatch does (idlegrid.common.node_link.target). Through
the relay holding a linked node's link, with the node named in the metadata
and the registry's service credential; or, for an operator-enabled direct
node, at its pinned endpoint (TLS when the operator requires it)."""

from __future__ import annotations

from dataclasses import dataclass

from idlegrid.common.auth import AUTH_KEY
from idlegrid.common.node_link import NoRoute, target
from idlegrid.registry.canary import Target
from idlegrid.registry.records import LiveNode


@dataclass(frozen=True, slots=True, kw_only=True)
class Reach:
    service_token: str = ""
    relay_ca: str | None = None      # PEM file: speak TLS to relays (the marketplace's internal TLS)
    direct_tls: bool = False         # speak TLS to direct endpoints (system roots)

    def target(self, node: LiveNode) -> Target | None:
        """Where the canary reaches ``node``, or None while it has no route."""
        try:
            address, metadata = target(node.base_proto())
        except NoRoute:
            return None
        if metadata:  # through a relay
            headers = dict(metadata)
            if self.service_token:
                headers[AUTH_KEY] = f"Bearer {self.service_token}"
            return Target(address, headers, ssl=self.relay_ca is not None, root_certificates=self.relay_ca)
        return Target(address, {}, ssl=self.direct_tls)
