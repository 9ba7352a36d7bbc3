"""A real ledger service (in-process, free port) on a fresh database per module."""

from __future__ import annotations

import pytest

from idlegrid.common.channel import open_channel
from idlegrid.ledger import service
from idlegrid.ledger.v1 import ledger_pb2_grpc
from tests.conftest import TOKEN


@pytest.fixture(scope="module")
async def ledger_server(config, db_url):
    running = await service.start(config, port=0, database_url=db_url, sweep_interval_s=0.2)
    yield running
    await running.stop(grace_s=1)


@pytest.fixture(scope="module")
async def ledger(ledger_server):
    """A LedgerService stub with the service token."""
    async with open_channel(f"127.0.0.1:{ledger_server.port}", token=TOKEN) as ch:
        yield ledger_pb2_grpc.LedgerServiceStub(ch)
