"""Node agents joining a stack: a real NodeAgent in this process in front of
a demo Triton from the session pool, registered, verified by the registry and
READY, and, when a scheduler runs, routable. When the stack runs a relay the
node joins through it (linked mode: the registry's verification and every job
reach its Triton down the agent's link), as a node behind NAT does; the
agent is given every relay replica of the stack."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass

from idlegrid.cli import demo_node
from idlegrid.node import config_file
from idlegrid.node.agent import AgentOptions, NodeAgent
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.registry.v1.registry_pb2 import NODE_STATE_READY as READY
from tests.harness.polling import eventually
from tests.harness.tritons import POOL, STATELESS_OPTIONS


@dataclass
class Node:
    name: str
    triton: object
    agent: NodeAgent
    owns_triton: bool  # a Triton of its own (stopped with the node), not the session's shared one

    @property
    def node_id(self) -> bytes:
        return self.agent.node_id


async def add_node(stack, name: str, *, node_config: config_file.NodeConfig | None = None,
                   provider_token: str | None = None, direct: bool = False, own_triton: bool = False,
                   **triton_options) -> Node:
    """Starts an agent for ``name`` under the stack's provider (or
    ``provider_token``) and waits until it is READY and routable.

    ``triton_options`` are start_demo_triton's. With none but ``models``, the
    node serves those models of the session's shared Triton (its config prices
    only them). Options without state (``llm_delay_ms``, ``llm_extra_tokens``,
    ...: tritons.STATELESS_OPTIONS) get the session's shared Triton for those
    options; a mode with state (``fail_after``, ``cheat``, ...) or
    ``own_triton`` gets a Triton of its own, which the test may kill.
    ``node_config``: the agent's prices and labels (default: the demo's,
    labelled ``node=name``, for the models served). ``direct``: register the
    Triton's endpoint instead of joining through the relay (the registry
    must allow direct endpoints)."""
    special = {k: v for k, v in triton_options.items() if k != "models"}
    own = own_triton or bool(set(special) - STATELESS_OPTIONS)
    if own:
        triton = await asyncio.to_thread(POOL.own, **triton_options)
    else:
        triton = await asyncio.to_thread(POOL.shared, **special)
    if node_config is None:
        demo = await asyncio.to_thread(demo_node.node_config)
        served = triton_options.get("models", tuple(demo.models))
        node_config = dataclasses.replace(demo, labels={"node": name},
                                          models={k: v for k, v in demo.models.items() if k in served})
    linked = {} if direct or "relay" not in stack.addrs else {"relay_addrs": stack.relay_addrs()}
    agent = NodeAgent(AgentOptions(registry_addr=stack.addrs["registry"],
                                   provider_token=provider_token or stack.provider_token,
                                   triton_url=triton.grpc_url, metrics_url=triton.metrics_url,
                                   node_config=node_config, **linked))
    node = Node(name, triton, agent, own)
    try:
        await agent.start()
        await agent.wait_for(READY, timeout_s=120)
        if "scheduler" in stack.servers:
            await routable(stack, node)
    except BaseException:
        with contextlib.suppress(Exception):
            await stop_node(node)
        raise
    return node


async def routable(stack, node: Node) -> None:
    """Waits until the scheduler's view has the node READY with its models."""
    def ready() -> bool:
        info = stack.table.nodes.get(node.node_id)
        return info is not None and info.node.state == rpb.NODE_STATE_READY and bool(info.models)

    await eventually(ready, what=f"the scheduler to see node {node.name} READY")


async def stop_node(node: Node) -> None:
    """Stops the agent; a Triton of the node's own is thrown away (SIGKILL
    and clean-up: a graceful stop waits for work a slow node still has)."""
    await node.agent.stop()
    if node.owns_triton:
        await asyncio.to_thread(node.triton.kill)
