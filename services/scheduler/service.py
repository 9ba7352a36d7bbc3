"""Runs the scheduler: the registry watch, channels to the ledger and
metering, the Triton client pool, the spot checker, and the gRPC server.
Stateless: run as many as the load needs (each replica samples and checks
the jobs it ran, within its own share of the budget)."""

from __future__ import annotations

import os

from idlegrid.common import server
from idlegrid.common.channel import open_channel, with_token
from idlegrid.common.config import Config, env_int
from idlegrid.common.identities import SCHEDULER, accepted
from idlegrid.common.node_view import NodeTable, RegistryWatcher
from idlegrid.metering.v1 import metering_pb2_grpc
from idlegrid.registry.v1 import registry_pb2_grpc
from idlegrid.scheduler.checks_sampling import SpotCheckSettings
from idlegrid.scheduler.jobs import Jobs
from idlegrid.scheduler.leases import MAX_JOB_S, WINDOW_S, Leases
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
                spot_checks: SpotCheckSettings | None = None,
                lease_window_s: float = WINDOW_S) -> server.RunningServer:
    """``spot_checks``: the spot checker's settings (default: from the
    environment, checks_sampling.SpotCheckSettings); ``lease_window_s``: how
    long a credit lease takes jobs (leases.py)."""
    token = config.token_for(SCHEDULER)
    del ledger_addr  # the scheduler reaches the ledger only through metering's leases
    channels = [open_channel(a, token=None, config=config) for a in (
        metering_addr or config.addrs["metering"], registry_addr or config.addrs["registry"])]
    metering = with_token(metering_pb2_grpc.MeteringServiceStub(channels[0]), token)
    registry = with_token(registry_pb2_grpc.RegistryServiceStub(channels[1]), token)
    table = NodeTable()
    watcher = RegistryWatcher(table, registry)
    watcher.start()
    triton = TritonPool(token=token or "", tls_ca=str(config.tls_ca) if config.tls_ca else None,
                        tls_name=config.addrs["relay"].rsplit("/", 1)[-1].rpartition(":")[0].strip("[]") or None)
    metadata = MetadataFetcher(table, triton)
    checks = SpotChecker(table, triton, registry, metering,
                         settings=spot_checks or SpotCheckSettings.from_env(os.environ))
    # The longest a job may run: a crashed replica's leases are cleared this long after their window.
    max_job_s = env_int(os.environ, "IDLEGRID_SCHEDULER_MAX_JOB_S", MAX_JOB_S, lo=1, hi=MAX_JOB_S)
    leases = Leases(metering, window_s=lease_window_s, max_job_s=max_job_s)
    jobs = Jobs(table, triton, leases, metering, records_in_flight_max=records_in_flight_max,
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
    leases.start()
    # on_stop runs last-added first: drain the jobs' records, then close the leases, then the channels
    running.on_stop.extend([close_channels, triton.close, watcher.stop, checks.stop, leases.stop, jobs.drain])
    running.parts.update(table=table, jobs=jobs, spot_checks=checks, leases=leases)
    return running


async def serve(config: Config) -> None:
    await server.serve_until_signal(await start(config))
