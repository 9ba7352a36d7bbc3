"""Helpers for the node agent tests."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from idlegrid.models.weights import weights_sha256
from idlegrid.node.agent import AgentOptions, NodeAgent
from idlegrid.node.config_file import ModelPricing, NodeConfig
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.registry.support import ECHO, LLM


def pricing(*, weights_file=None) -> NodeConfig:
    """The demo models, priced; the language model with the catalog's weights
    digest (or digested from ``weights_file``)."""
    digest = "" if weights_file is not None else f"sha256:{weights_sha256()}"
    return NodeConfig(region="test", labels={"suite": "node"}, models={
        LLM: ModelPricing(name=LLM, price_per_million_input_tokens=11, price_per_million_output_tokens=22,
                          context_length=2048, weights_file=weights_file, weights_digest=digest),
        ECHO: ModelPricing(name=ECHO, price_per_request=3),
    })


def options(reg, provider, triton, **kw) -> AgentOptions:
    return AgentOptions(registry_addr=reg.addr, provider_token=provider.token, triton_url=triton.grpc_url,
                        node_config=kw.pop("node_config", None) or pricing(), **kw)


class ScriptedProbe:
    """A load probe the test drives (the agent's LoadProbe seam): reports
    ``in_flight``; while ``gate`` is clear, sampling blocks, so heartbeats stop."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.samples = 0

    async def sample(self) -> pb.NodeLoad:
        await self.gate.wait()
        self.samples += 1
        return pb.NodeLoad(in_flight=self.in_flight)

    async def close(self) -> None:
        pass


@asynccontextmanager
async def running(agent: NodeAgent):
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()
