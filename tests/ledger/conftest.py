"""A real ledger service (in-process, free port) on a fresh database per
module: a one-part stack from the harness (tests/harness/stack.py)."""

from __future__ import annotations

import pytest

from tests.harness.stack import start_stack


@pytest.fixture(scope="module")
async def ledger_stack(config, db_url):
    stack = await start_stack(config, db_url, parts=("ledger",))
    yield stack
    await stack.stop()


@pytest.fixture(scope="module")
def ledger_server(ledger_stack):
    """The running ledger (its ``port``)."""
    return ledger_stack.ledger_srv


@pytest.fixture(scope="module")
def ledger(ledger_stack):
    """A LedgerService stub with the service token."""
    return ledger_stack.ledger
