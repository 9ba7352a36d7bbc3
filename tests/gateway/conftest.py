"""The whole marketplace for gateway tests, every part real and in this
process (except Triton, a child process): ledger, metering, registry,
scheduler and gateway on a fresh database per module (tests/harness), and
the session's shared demo Triton (SmolLM2 and echo) registered as a READY
node of a provider made through the gateway's admin API."""

from __future__ import annotations

import dataclasses

import pytest

from idlegrid.cli import demo_node
from idlegrid.demo import ECHO_MODEL_NAME, LLM_MODEL_NAME
from idlegrid.node import config_file
from idlegrid.registry.settings import RegistrySettings
from tests.harness.rest import open_rest
from tests.harness.stack import PARTS, start_stack

# An agent learns that it is READY from a heartbeat answer: beats every half
# second make a node join quickly; a lease of 30 beats is the default 15 s, so
# a busy machine never expires the node mid-module.
REGISTRY = RegistrySettings(heartbeat_interval_ms=500, lease_intervals=30)
# Prices in micro-credits: high enough that the platform fee is never zero.
LLM_PRICE_IN, LLM_PRICE_OUT, ECHO_PRICE = 10_000_000, 20_000_000, 1_000


def node_config() -> config_file.NodeConfig:
    demo = demo_node.node_config()
    llm, echo = demo.models[LLM_MODEL_NAME], demo.models[ECHO_MODEL_NAME]
    return dataclasses.replace(demo, models={
        LLM_MODEL_NAME: dataclasses.replace(llm, price_per_million_input_tokens=LLM_PRICE_IN,
                                            price_per_million_output_tokens=LLM_PRICE_OUT),
        ECHO_MODEL_NAME: dataclasses.replace(echo, price_per_request=ECHO_PRICE)})


@pytest.fixture(scope="module")
async def stack(config, db_url, triton):
    """The gateway's view of a whole stack (tests/harness/rest.py)."""
    services = await start_stack(config, db_url, parts=PARTS, provider=False, registry_settings=REGISTRY)
    try:
        rest = await open_rest(services, node_config=node_config())
    except BaseException:
        await services.stop()
        raise
    yield rest
    await services.stop()
