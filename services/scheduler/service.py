"""Runs the scheduler: the registry watch, channels to the ledger and
metering, the Triton client pool, the spot checker, and the gRPC server.
Stateless: run as many as the load needs (each replica samples and checks
the jobs it ran, within its own share of the budget)."""

from __future__ import annotations

import os

from idlegrid.common import server
from idlegrid.common.channel import open_channel, with_token
from idlegrid.common.config import Config
from idlegrid.common.identities import SCHEDULER, accepted
from idlegrid.common.node_view import NodeTable, RegistryWatcher
from idlegrid.ledger.v1 import ledger_pb2_grpc
from idlegrid.metering.v1 import metering_pb2_grpc
from idlegrid.registry.v1 import registry_pb2_grpc
from idlegrid.scheduler.checks_sampling import SpotCheckSettings
from idlegrid.scheduler.jobs import Jobs
from idlegrid.scheduler.metadata import MetadataFetcher
from idlegrid.scheduler.recording import RECORDS_IN_FLIGHT_MAX
from idlegrid.scheduler.servicer import SchedulerServicer
from idlegrid.scheduler.spot_checks import SpotChecker
from idlegrid.scheduler.triton import TritonPool
from idlegrid.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name


async def start(config: Config, *, port: int | None = None, ledger_addr: str | None = None,
                metering_addr: str | None = None, registry_addr: str | None = None,
                records_in_flight_max: int = RECORDS_IN_FLIGHT_MAX,
                spot_checks: SpotCheckSettings | None = None) -> server.RunningServer:
    """``spot_checks``: the spot checker's settings (default: from the
    environment, checks_sampling.SpotCheckSettings)."""
    token = config.token_for(SCHEDULER)
    channels = [open_channel(a, token=None, config=config) for a in (
        ledger_addr or config.addrs["ledger"], metering_addr or config.addrs["metering"],
        registry_addr or config.addrs["registry"])]
    ledger = with_token(ledger_pb2_grpc.LedgerServiceStub(channels[0]), token)
    metering = with_token(metering_pb2_grpc.MeteringServiceStub(channels[1]), token)
    registry = with_token(registry_pb2_grpc.RegistryServiceStub(channels[2]), token)
    table = NodeTable()
    watcher = RegistryWatcher(table, registry)
    watcher.start()
    triton = TritonPool(token=token or "", tls_ca=str(config.tls_ca) if config.tls_ca else None,
                        tls_name=config.addrs["relay"].rsplit("/", 1)[-1].rpartition(":")[0].strip("[]") or None)
    metadata = MetadataFetcher(table, triton)
    checks = SpotChecker(table, triton, registry, metering,
                         settings=spot_checks or SpotCheckSettings.from_env(os.environ))
    jobs = Jobs(table, triton, ledger, metering, records_in_flight_max=records_in_flight_max,
                known_metadata=lambda choice, version: metadata.known(choice.info, choice.model.offer.name, version),
                registry=registry, spot_checks=checks)
    running = await server.start(
        "scheduler",
        [server.Registration(scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
                             SchedulerServicer(jobs, metadata), SERVICE_NAME)],
        config=config, port=config.ports["scheduler"] if port is None else port,
        guard=config.guard(accepted(SCHEDULER)),
    )

    async def close_channels() -> None:
        for ch in channels:
            await ch.close()

    checks.start()
    running.on_stop.extend([close_channels, triton.close, watcher.stop, checks.stop, jobs.drain])
    running.parts.update(table=table, jobs=jobs, spot_checks=checks)
    return running


async def serve(config: Config) -> None:
    await server.serve_until_signal(await start(config))
