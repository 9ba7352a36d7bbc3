"""Runs metering: database, migrations, the usage writer (group commit), the
settlement worker, the earnings
worker (releases held earnings, voids suspended nodes' ones; it follows the
registry's WatchNodes), the gRPC server."""

from __future__ import annotations

from pathlib import Path

from idlegrid.common import db, server
from idlegrid.common.channel import open_channel, with_token
from idlegrid.common.config import Config
from idlegrid.common.identities import METERING, accepted
from idlegrid.ledger.v1 import ledger_pb2_grpc
from idlegrid.metering.clearing import ClearingWorker
from idlegrid.metering.earnings import EarningsWorker
from idlegrid.metering.leases_desk import LeaseDesk
from idlegrid.metering.servicer import MeteringServicer
from idlegrid.metering.settings import MeteringSettings
from idlegrid.metering.settlement import SettlementWorker
from idlegrid.metering.suspensions import Suspensions
from idlegrid.metering.usage_writer import UsageWriter
from idlegrid.metering.v1 import metering_pb2, metering_pb2_grpc
from idlegrid.registry.v1 import registry_pb2_grpc

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name


async def start(config: Config, *, port: int | None = None, database_url: str | None = None,
                ledger_addr: str | None = None, registry_addr: str | None = None, watch_registry: bool = True,
                poll_s: float = 1.0, settings: MeteringSettings | None = None) -> server.RunningServer:
    """``settings``: by default read from the environment. ``watch_registry``
    False (tests of metering alone): no node is ever taken as suspended; only
    VoidNodeEarnings voids earnings."""
    settings = settings or MeteringSettings.from_env()
    url = database_url or await db.resolve_url(config)
    pool = await db.create_pool(url, max_size=config.db_pool_max)
    if config.migrate_on_start:
        await db.migrate(pool, "metering", MIGRATIONS)
    token = config.token_for(METERING)
    channels = [open_channel(ledger_addr or config.addrs["ledger"], token=None, config=config)]
    ledger = with_token(ledger_pb2_grpc.LedgerServiceStub(channels[0]), token)
    registry = None
    if watch_registry:
        channels.append(open_channel(registry_addr or config.addrs["registry"], token=None, config=config))
        registry = with_token(registry_pb2_grpc.RegistryServiceStub(channels[1]), token)
    suspensions = Suspensions(registry)
    worker = SettlementWorker(pool, ledger, poll_s=poll_s)
    earnings = EarningsWorker(pool, ledger, settings, suspensions)
    clearing = ClearingWorker(pool, ledger, hold_s=settings.earnings_hold_s)  # leases' batched clearing
    suspensions.start()
    # Per-job records wake the settlement worker; records on a lease are cleared with it.
    writer = UsageWriter(pool, on_created=lambda per_job: worker.wake() if per_job else None)
    desk = LeaseDesk(pool, ledger)
    worker.start()
    earnings.start()
    clearing.start()
    writer.start()
    servicer = MeteringServicer(pool, writer, desk, earnings, fee_bps=config.platform_fee_bps,
                                earnings_hold_s=settings.earnings_hold_s)
    # writer.stop runs first: what is queued is stored before the pool closes.
    hooks = [pool.close, *(ch.close for ch in channels), suspensions.stop, worker.stop, earnings.stop, writer.stop,
             clearing.stop]
    try:
        running = await server.start(
            "metering",
            [server.Registration(metering_pb2_grpc.add_MeteringServiceServicer_to_server, servicer, SERVICE_NAME)],
            config=config, port=config.ports["metering"] if port is None else port,
            guard=config.guard(accepted(METERING)),
            quiet_methods=(f"/{SERVICE_NAME}/RecordUsage", f"/{SERVICE_NAME}/RecordUsageBatch"),
        )
    except BaseException:  # nothing stays half started
        for hook in reversed(hooks):
            await hook()
        raise
    # The hooks run in reverse: the workers and the watch stop, then the channels and the pool close.
    running.on_stop.extend(hooks)
    running.parts.update(worker=worker, earnings=earnings, suspensions=suspensions, clearing=clearing, usage_writer=writer, leases=desk)
    return running


async def serve(config: Config) -> None:
    await server.serve_until_signal(await start(config))
