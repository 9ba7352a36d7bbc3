"""Runs the ledger service: database, migrations (ledger/migrations, and the
functions in ledger/sql), the group-commit writer and the gRPC server."""

from __future__ import annotations

from pathlib import Path

from idlegrid.common import db, server
from idlegrid.common.config import Config
from idlegrid.ledger.chart import ensure_well_known
from idlegrid.ledger.servicer import LedgerServicer
from idlegrid.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from idlegrid.ledger.writer import BatchWriter

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name


async def start(config: Config, *, port: int | None = None, database_url: str | None = None,
                sweep_interval_s: float = 1.0) -> server.RunningServer:
    """Starts the ledger; returns the running server (stop() closes everything)."""
    url = database_url or await db.resolve_url(config)
    pool = await db.create_pool(url, max_size=config.db_pool_max)
    await db.migrate(pool, "ledger", MIGRATIONS)
    await ensure_well_known(pool)
    writer = BatchWriter(pool, sweep_interval_s=sweep_interval_s)
    await writer.start()
    running = await server.start(
        "ledger",
        [server.Registration(ledger_pb2_grpc.add_LedgerServiceServicer_to_server,
                             LedgerServicer(pool, writer), SERVICE_NAME)],
        config=config, port=config.ports["ledger"] if port is None else port,
        token=config.token(),
        quiet_methods=(f"/{SERVICE_NAME}/CreateTransfers", f"/{SERVICE_NAME}/Reserve",
                       f"/{SERVICE_NAME}/Settle", f"/{SERVICE_NAME}/SettleBatch"),
    )
    running.on_stop.append(pool.close)
    running.on_stop.append(writer.stop)
    return running


async def serve(config: Config) -> None:
    running = await start(config)
    await server.serve_until_signal(running)
