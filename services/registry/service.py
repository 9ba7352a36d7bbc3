"""Runs the registry service: database, migrations, the live view and its
background work, and the gRPC server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from idlegrid.common import db, server
from idlegrid.common.config import Config
from idlegrid.common.identities import REGISTRY, accepted
from idlegrid.registry.canary import SkipVerifier, TritonVerifier, Verifier
from idlegrid.registry.direct import Resolver
from idlegrid.registry.reach import Reach
from idlegrid.registry.registry import Registry
from idlegrid.registry.servicer import NODE_METHODS, SERVICE_NAME, RegistryServicer
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2_grpc

MIGRATIONS = Path(__file__).parent / "migrations"

log = structlog.get_logger("registry")


def verifier_for(settings: RegistrySettings) -> Verifier:
    if settings.skip_verification:
        return SkipVerifier()
    return TritonVerifier(call_timeout_s=settings.verify_call_timeout_ms / 1000,
                          canary_timeout_s=settings.canary_timeout_ms / 1000,
                          total_timeout_s=settings.verify_timeout_ms / 1000)


@dataclass(frozen=True, slots=True)
class RunningRegistry:
    """The running gRPC server and the registry behind it (tests and the
    bench look at the latter)."""

    server: server.RunningServer
    registry: Registry

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def node_port(self) -> int | None:
        return self.server.node_port

    async def stop(self, grace_s: float = server.GRACE_S) -> None:
        await self.server.stop(grace_s)


async def start(config: Config, *, port: int | None = None, database_url: str | None = None,
                settings: RegistrySettings | None = None, resolver: Resolver | None = None) -> RunningRegistry:
    """Starts the registry; stop() closes everything. ``resolver``: how
    direct endpoints' hosts resolve (tests inject theirs)."""
    settings = settings or RegistrySettings()
    if settings.skip_verification:
        log.warning("registry.verification_disabled",
                    note="nodes become READY without their Triton being checked: benchmarks and tests only")
    url = database_url or await db.resolve_url(config)
    pool = await db.create_pool(url, max_size=config.db_pool_max)
    if config.migrate_on_start:
        await db.migrate(pool, "registry", MIGRATIONS)
    reach = Reach(service_token=config.token_for(REGISTRY) or "", relay_ca=str(config.tls_ca) if config.tls_ca else None,
                  direct_tls=settings.direct_require_tls)
    registry = Registry(pool, settings, verifier_for(settings), reach=reach, resolver=resolver)
    await registry.open()
    running = await server.start(
        "registry",
        [server.Registration(registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                             RegistryServicer(registry), SERVICE_NAME)],
        config=config, port=config.ports["registry"] if port is None else port,
        guard=config.guard(accepted(REGISTRY)), open_methods=NODE_METHODS,
        node_port=config.node_port("registry"),  # under mTLS: node agents have no certificate
        quiet_methods=(f"/{SERVICE_NAME}/Heartbeat", f"/{SERVICE_NAME}/WatchNodes"),
    )
    running.on_stopping.append(registry.hub.close)  # watches never end by themselves
    running.on_stop.append(pool.close)
    running.on_stop.append(registry.close)
    return RunningRegistry(running, registry)


async def serve(config: Config, settings: RegistrySettings | None = None) -> None:
    running = await start(config, settings=settings)
    await server.serve_until_signal(running.server)
