"""The money path for the scheduler tests: every service behind the gateway
(tests/harness/stack.py) on the module's database, with node ``a`` serving
both models of the session's shared demo Triton."""

import pytest

from tests.harness.stack import start_stack


@pytest.fixture(scope="module")
async def stack(config, db_url):
    s = await start_stack(config, db_url)
    await s.add_node("a")
    yield s
    await s.stop()
