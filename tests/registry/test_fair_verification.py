"""The verification queue is fair across providers: round-robin, with a
global and a per-provider bound, so one provider's slow nodes cannot starve
another provider's verification."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as pb
from idlegrid.registry.verify_queue import FairSlots
from tests.registry.conftest import LOOPBACK
from tests.registry.support import (
    LLM,
    echo_offer,
    llm_offer,
    next_delta,
    read_snapshot,
    registration,
)


async def _run_in_order(slots: FairSlots, keys: list[str]) -> list[str]:
    """Queues one job per key (in this order) while a first job of "a" holds
    the slots; returns the order in which they got a slot."""
    order: list[str] = []
    gate = asyncio.Event()

    async def job(key: str, hold: asyncio.Event | None = None) -> None:
        async with slots.slot(key):
            order.append(key)
            if hold is not None:
                await hold.wait()

    first = asyncio.create_task(job("a", gate))
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(job(k)) for k in keys]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *tasks)
    return order


async def test_waiting_providers_are_served_round_robin():
    order = await _run_in_order(FairSlots(total_max=1, per_key_max=1), ["a", "a", "a", "b", "c", "b"])
    assert order == ["a", "b", "c", "a", "b", "a", "a"]


async def test_a_cancelled_waiter_gives_its_turn_away_and_bounds_hold():
    slots = FairSlots(total_max=2, per_key_max=1)
    gate = asyncio.Event()

    async def hold(key: str) -> None:
        async with slots.slot(key):
            await gate.wait()

    a1 = asyncio.create_task(hold("a"))
    a2 = asyncio.create_task(hold("a"))
    await asyncio.sleep(0)
    assert slots.running == 1 and slots.waiting("a") == 1  # the per-provider bound
    b1 = asyncio.create_task(hold("b"))
    c1 = asyncio.create_task(hold("c"))
    await asyncio.sleep(0)
    assert slots.running == 2 and slots.waiting("c") == 1  # the global bound
    c1.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await c1
    assert slots.waiting() == 1
    gate.set()
    await asyncio.gather(a1, a2, b1)
    assert slots.running == 0 and slots.waiting() == 0


@pytest.mark.slow  # real demo Tritons
async def test_one_providers_slow_nodes_do_not_starve_another_providers_verification(make_registry, tritons,
                                                                                      triton):
    """Provider A registers several nodes whose canary is slow (a Triton of
    its own with llm_delay_ms), then provider B one node: B's node is READY
    while A's backlog still waits (ordering, not durations)."""
    slow = await asyncio.to_thread(tritons.own, models=(LLM,), llm_delay_ms=500)
    proxies = [await _proxy(slow.grpc_url) for _ in range(4)]  # one endpoint per node: they are unique
    reg = await make_registry(RegistrySettings(
        heartbeat_interval_ms=60_000, sweep_interval_ms=50, load_report_interval_ms=50, verifications_max=1,
        verifications_per_provider_max=1, **LOOPBACK))
    a, b = await reg.provider(), await reg.provider()
    watch = reg.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    await read_snapshot(watch)
    a_nodes = [await reg.register(a, registration(f"127.0.0.1:{p.sockets[0].getsockname()[1]}",
                                                  models=[llm_offer()])) for p in proxies]
    b_node = await reg.register(b, registration(triton.grpc_url, models=[echo_offer()]))
    ready: list[bytes] = []
    while b_node.node_id not in ready:
        d = await next_delta(watch)
        if d.node.state == pb.NODE_STATE_READY:
            ready.append(d.node.node_id)
    a_ids = {n.node_id for n in a_nodes}
    assert len(a_ids & set(ready)) <= 1, "B waited behind A's backlog"
    assert len(a_ids - set(ready)) >= 3
    watch.cancel()
    for n in a_nodes:  # A's backlog still drains
        await reg.wait_state(n.node_id, pb.NODE_STATE_READY)
    for p in proxies:
        p.close()


async def _proxy(target: str) -> asyncio.Server:
    """A TCP forwarder on a free loopback port to ``target`` (host:port)."""
    host, _, port = target.rpartition(":")

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    return await asyncio.start_server(handle, "127.0.0.1", 0)
