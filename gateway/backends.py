"""The gateway's channels to the backend services: one per service, each
call carrying the service token, and the live view of nodes that follows the
registry (idlegrid.common.node_view)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from idlegrid.common.channel import open_channel, with_token
from idlegrid.common.config import Config
from idlegrid.common.identities import GATEWAY
from idlegrid.common.node_view import NodeTable, RegistryWatcher
from idlegrid.ledger.v1 import ledger_pb2_grpc
from idlegrid.metering.v1 import metering_pb2_grpc
from idlegrid.registry.v1 import registry_pb2_grpc
from idlegrid.scheduler.v1 import scheduler_pb2_grpc

SERVICES = ("ledger", "scheduler", "metering", "registry")
HEALTH_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Backends:
    ledger: ledger_pb2_grpc.LedgerServiceStub
    scheduler: scheduler_pb2_grpc.SchedulerServiceStub
    metering: metering_pb2_grpc.MeteringServiceStub
    registry: registry_pb2_grpc.RegistryServiceStub
    nodes: NodeTable
    channels: dict[str, grpc.aio.Channel]
    _watcher: RegistryWatcher | None = field(default=None)

    @classmethod
    def open(cls, config: Config, addrs: dict[str, str]) -> Backends:
        token = config.token_for(GATEWAY)  # the gateway's own identity
        channels = {name: open_channel(addrs[name], token=None, config=config) for name in SERVICES}
        registry = with_token(registry_pb2_grpc.RegistryServiceStub(channels["registry"]), token)
        table = NodeTable()
        b = cls(
            ledger=with_token(ledger_pb2_grpc.LedgerServiceStub(channels["ledger"]), token),
            scheduler=with_token(scheduler_pb2_grpc.SchedulerServiceStub(channels["scheduler"]), token),
            metering=with_token(metering_pb2_grpc.MeteringServiceStub(channels["metering"]), token),
            registry=registry, nodes=table, channels=channels)
        b._watcher = RegistryWatcher(table, registry)
        b._watcher.start()
        return b

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
        for ch in self.channels.values():
            await ch.close()

    async def health(self) -> dict[str, str]:
        """Each backend's grpc.health.v1 status (SERVING, NOT_SERVING, UNREACHABLE)."""

        async def one(name: str) -> str:
            stub = health_pb2_grpc.HealthStub(self.channels[name])
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_S)
            except grpc.aio.AioRpcError:
                return "UNREACHABLE"
            return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

        results = await asyncio.gather(*(one(n) for n in SERVICES))
        return dict(zip(SERVICES, results, strict=True))
