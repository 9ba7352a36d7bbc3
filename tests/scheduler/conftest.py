import pytest

from tests.scheduler.stack import start_stack, stop_stack


@pytest.fixture(scope="module")
async def stack(config, db_url):
    s = await start_stack(config, db_url)
    await s.add_node("a")
    yield s
    await stop_stack(s)
