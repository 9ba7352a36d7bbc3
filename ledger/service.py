"""Runs the ledger service: database, migrations (ledger/migrations, and the
functions in ledger/sql), the group-commit writer, the checkpointer (signed
chain heads in a log outside the database) and the gRPC server."""

from __future__ import annotations

from pathlib import Path

import structlog

from idlegrid.common import db, server
from idlegrid.common.config import Config
from idlegrid.common.identities import LEDGER, accepted
from idlegrid.ledger.chart import ensure_well_known
from idlegrid.ledger.checkpoint_keys import signing_key
from idlegrid.ledger.checkpoint_settings import CheckpointSettings
from idlegrid.ledger.checkpointer import Checkpointer
from idlegrid.ledger.servicer import LedgerServicer
from idlegrid.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from idlegrid.ledger.writer import BatchWriter

log = structlog.get_logger("ledger.service")

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name


async def start(config: Config, *, port: int | None = None, database_url: str | None = None,
                sweep_interval_s: float = 1.0,
                checkpoints: CheckpointSettings | None = None) -> server.RunningServer:
    """Starts the ledger; returns the running server (stop() closes everything).
    ``checkpoints``: by default read from the environment
    (idlegrid.ledger.checkpoint_settings). A checkpoint key or log that
    cannot be used is a ConfigError before anything starts."""
    checkpoints = checkpoints or CheckpointSettings.from_env(home=config.home,
                                                             embedded=config.database_url is None)
    key = signing_key(checkpoints) if checkpoints.signs else None
    checkpointer = Checkpointer(checkpoints, key) if key is not None else None
    if checkpointer is not None:
        await checkpointer.open()
    elif checkpoints.mode == "auto":
        log.warning("ledger.checkpoints_off", reason="IDLEGRID_LEDGER_CHECKPOINT_KEY is not set and the "
                    "database is not the embedded one: history rewritten through the database would go unnoticed")
    url = database_url or await db.resolve_url(config)
    pool = await db.create_pool(url, max_size=config.db_pool_max)
    writer = None
    try:
        if config.migrate_on_start:
            await db.migrate(pool, "ledger", MIGRATIONS)
        await ensure_well_known(pool)
        if checkpointer is not None:
            await checkpointer.start(pool)
        writer = BatchWriter(pool, sweep_interval_s=sweep_interval_s)
        await writer.start()
        running = await server.start(
            "ledger",
            [server.Registration(ledger_pb2_grpc.add_LedgerServiceServicer_to_server,
                                 LedgerServicer(pool, writer), SERVICE_NAME)],
            config=config, port=config.ports["ledger"] if port is None else port,
            guard=config.guard(accepted(LEDGER)),
            quiet_methods=(f"/{SERVICE_NAME}/CreateTransfers", f"/{SERVICE_NAME}/Reserve",
                           f"/{SERVICE_NAME}/Settle", f"/{SERVICE_NAME}/SettleBatch",
                           f"/{SERVICE_NAME}/ReleaseEarnings", f"/{SERVICE_NAME}/VoidEarnings"),
        )
    except BaseException:  # nothing stays half started
        if writer is not None:
            await writer.stop()
        if checkpointer is not None:
            await checkpointer.stop(final=False)
        await pool.close()
        raise
    # The hooks run in reverse: the writer drains, the final checkpoint, then the pool closes.
    running.on_stop.append(pool.close)
    if checkpointer is not None:
        running.on_stop.append(checkpointer.stop)
        running.parts["checkpointer"] = checkpointer
    running.on_stop.append(writer.stop)
    return running


async def serve(config: Config) -> None:
    running = await start(config)
    await server.serve_until_signal(running)
