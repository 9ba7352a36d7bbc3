"""Runs metering: database, migrations, the settlement worker, the gRPC server."""

from __future__ import annotations

from pathlib import Path

from idlegrid.common import db, server
from idlegrid.common.channel import open_channel, with_token
from idlegrid.common.config import Config
from idlegrid.common.identities import METERING, accepted
from idlegrid.ledger.v1 import ledger_pb2_grpc
from idlegrid.metering.servicer import MeteringServicer
from idlegrid.metering.settlement import SettlementWorker
from idlegrid.metering.v1 import metering_pb2, metering_pb2_grpc

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name


async def start(config: Config, *, port: int | None = None, database_url: str | None = None,
                ledger_addr: str | None = None, poll_s: float = 1.0) -> server.RunningServer:
    url = database_url or await db.resolve_url(config)
    pool = await db.create_pool(url, max_size=config.db_pool_max)
    if config.migrate_on_start:
        await db.migrate(pool, "metering", MIGRATIONS)
    channel = open_channel(ledger_addr or config.addrs["ledger"], token=None, config=config)
    ledger = with_token(ledger_pb2_grpc.LedgerServiceStub(channel), config.token_for(METERING))
    worker = SettlementWorker(pool, ledger, poll_s=poll_s)
    worker.start()
    running = await server.start(
        "metering",
        [server.Registration(metering_pb2_grpc.add_MeteringServiceServicer_to_server,
                             MeteringServicer(pool, worker, fee_bps=config.platform_fee_bps), SERVICE_NAME)],
        config=config, port=config.ports["metering"] if port is None else port,
        guard=config.guard(accepted(METERING)),
        quiet_methods=(f"/{SERVICE_NAME}/RecordUsage",),
    )
    running.on_stop.extend([pool.close, channel.close, worker.stop])
    running.parts["worker"] = worker
    return running


async def serve(config: Config) -> None:
    await server.serve_until_signal(await start(config))
