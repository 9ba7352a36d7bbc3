"""Runs a relay replica: the hub of links, the Link servicer for agents and
the KServe face for the marketplace, on one gRPC port.

Replicas share nothing but the registry's record of which relay holds each
node's link, so they scale out behind any TCP load balancer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog

from idlegrid.common import server
from idlegrid.common.channel import open_channel, with_token
from idlegrid.common.config import Config
from idlegrid.common.identities import RELAY, accepted, allowed
from idlegrid.registry.v1 import registry_pb2_grpc
from idlegrid.relay.forward import Forwarder, ensure_descriptor, forwarder_adder
from idlegrid.relay.hub import Hub
from idlegrid.relay.linker import LINK_METHOD, SERVICE_NAME, LinkServicer, link_adder
from idlegrid.relay.settings import FORWARDED_STREAM, FORWARDED_UNARY, KSERVE_SERVICE, RelaySettings

log = structlog.get_logger("relay")


@dataclass(frozen=True, slots=True)
class RunningRelay:
    """The running server, its hub (tests and the bench look at the links)
    and its identity."""

    server: server.RunningServer
    hub: Hub
    relay_id: str
    advertise_addr: str

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def node_port(self) -> int | None:
        return self.server.node_port

    async def stop(self, grace_s: float | None = None) -> None:
        """Lets the calls in flight finish (up to ``grace_s``), closes every
        link (their agents move to another replica), then stops the server."""
        grace_s = self.server.grace_s if grace_s is None else grace_s
        await self.hub.drain(grace_s)
        await self.hub.stop()
        await self.server.stop(grace_s)


async def start(config: Config, *, port: int | None = None, registry_addr: str | None = None,
                advertise_addr: str | None = None, settings: RelaySettings | None = None,
                host: str | None = None) -> RunningRelay:
    """Starts a relay; stop() closes the links (their calls fail UNAVAILABLE,
    the registry is told) and the server. ``advertise_addr``: where the
    marketplace reaches this replica (default: the bound host and port)."""
    settings = settings or RelaySettings()
    ensure_descriptor()
    hub = Hub(settings)
    channel = open_channel(registry_addr or config.addrs["registry"], token=None, config=config)
    registry = with_token(registry_pb2_grpc.RegistryServiceStub(channel), config.token_for(RELAY))
    relay_id = uuid.uuid4().hex
    guard = config.guard(accepted(RELAY))
    # The forwarded methods check the caller themselves: the identities dispatch and verification use.
    forwarder = Forwarder(hub, guard, allowed=allowed(f"/{KSERVE_SERVICE}/ModelInfer"))
    linker = LinkServicer(hub, registry, relay_id=relay_id, relay_addr="")
    forwarded = tuple(f"/{KSERVE_SERVICE}/{m}" for m in (*FORWARDED_UNARY, *FORWARDED_STREAM))
    running = await server.start(
        "relay",
        [server.Registration(link_adder(linker), linker, SERVICE_NAME),
         server.Registration(forwarder_adder(forwarder), forwarder, KSERVE_SERVICE)],
        config=config, port=config.ports["relay"] if port is None else port, host=host,
        guard=guard, open_methods=(LINK_METHOD,), quiet_methods=forwarded,
        node_port=config.node_port("relay"),  # under mTLS: node agents have no certificate
    )
    linker.relay_addr = advertise_addr or config.relay_advertise_addr or f"{host or config.bind_host}:{running.port}"
    hub.start()

    async def close() -> None:
        await hub.stop()
        await linker.drain()
        await channel.close()

    running.on_stop.append(close)
    running.parts.update(hub=hub, linker=linker)
    log.info("relay.started", relay_id=relay_id, advertise_addr=linker.relay_addr)
    return RunningRelay(running, hub, relay_id, linker.relay_addr)


async def serve(config: Config, settings: RelaySettings | None = None) -> None:
    """Runs until SIGTERM or SIGINT, then lets calls in flight finish and
    closes every link at once (agents move to another replica) before the
    server stops, instead of holding idle links for the whole grace period."""
    running = await start(config, settings=settings)
    await server.wait_for_signal()
    log.info("relay.stopping", relay_id=running.relay_id, links=len(running.hub.links))
    await running.stop()
