"""A whole money path in-process for end-to-end tests: ledger, metering,
registry (really verifying nodes), scheduler, and real demo Tritons, each
registered by a real node agent."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from dataclasses import dataclass, field

import asyncpg

from idlegrid.common.channel import open_channel
from idlegrid.demo import start_demo_triton
from idlegrid.ledger import service as ledger_service
from idlegrid.ledger.audit import verify
from idlegrid.ledger.ids import well_known_account
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.ledger.v1 import ledger_pb2_grpc
from idlegrid.metering import service as metering_service
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.metering.v1 import metering_pb2_grpc
from idlegrid.node import config_file
from idlegrid.node.agent import READY, AgentOptions, NodeAgent
from idlegrid.registry import service as registry_service
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.registry.v1 import registry_pb2_grpc
from idlegrid.scheduler import service as scheduler_service
from idlegrid.scheduler.v1 import scheduler_pb2_grpc
from tests.conftest import TOKEN

DMNEC = lpb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS


@dataclass
class Node:
    name: str
    triton: object
    agent: NodeAgent

    @property
    def node_id(self) -> bytes:
        return self.agent.node_id


@dataclass
class Stack:
    config: object
    db_url: str
    ledger_srv: object
    metering_srv: object
    registry_srv: object
    scheduler_srv: object
    ledger: ledger_pb2_grpc.LedgerServiceStub
    metering: metering_pb2_grpc.MeteringServiceStub
    registry: registry_pb2_grpc.RegistryServiceStub
    scheduler: scheduler_pb2_grpc.SchedulerServiceStub
    provider_account: bytes
    provider_token: str
    nodes: dict[str, Node] = field(default_factory=dict)
    channels: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def table(self):
        return self.scheduler_srv.parts["table"]

    async def consumer(self, credits: int) -> bytes:
        acct = os.urandom(16)
        r = await self.ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[
            lpb.Account(id=acct, ledger=1, kind=lpb.ACCOUNT_KIND_CONSUMER, flags=DMNEC)]))
        assert list(r.results) == [0]
        if credits:
            t = await self.ledger.TopUp(lpb.TopUpRequest(account_id=acct, amount=credits, idempotency_key=acct.hex()))
            assert t.status == lpb.OPERATION_STATUS_OK
        return acct

    async def add_node(self, name: str, **triton_options) -> Node:
        triton = await asyncio.to_thread(start_demo_triton, **triton_options)
        cfg = await asyncio.to_thread(config_file.demo)
        served = triton_options.get("models", tuple(cfg.models))
        cfg = dataclasses.replace(cfg, labels={"node": name},
                                  models={k: v for k, v in cfg.models.items() if k in served})
        agent = NodeAgent(AgentOptions(registry_addr=f"127.0.0.1:{self.registry_srv.port}",
                                       provider_token=self.provider_token, triton_url=triton.grpc_url,
                                       metrics_url=triton.metrics_url, node_config=cfg))
        await agent.start()
        await agent.wait_for(READY, timeout_s=120)
        node = Node(name, triton, agent)
        self.nodes[name] = node
        await self.routable(node)
        return node

    async def routable(self, node: Node, timeout_s: float = 30) -> None:
        """Waits until the scheduler's view has the node READY."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.table.nodes.get(node.node_id)
            if info is not None and info.node.state == rpb.NODE_STATE_READY and info.models:
                return
            assert time.monotonic() < deadline, "the scheduler never saw the node READY"
            await asyncio.sleep(0.05)

    async def balances(self, ids: list[bytes]) -> list[lpb.Account]:
        return list((await self.ledger.LookupAccounts(lpb.LookupAccountsRequest(ids=ids))).accounts)

    async def settled(self, timeout_s: float = 20) -> None:
        """Waits until the scheduler recorded every job's usage and metering
        has no pending settlement."""
        await self.scheduler_srv.parts["jobs"].drain(timeout_s)
        deadline = time.monotonic() + timeout_s
        conn = await asyncpg.connect(self.db_url)
        try:
            while await conn.fetchval("SELECT count(*) FROM metering.usage WHERE settlement = 1"):
                assert time.monotonic() < deadline, "settlements still pending"
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    async def check_books(self) -> None:
        """Σ consumer charges = Σ provider earnings + Σ platform fees;
        Σ metered = Σ settled; ledger verify passes."""
        await self.settled()
        conn = await asyncpg.connect(self.db_url)
        try:
            rep = await verify(conn)
            assert rep.ok, rep.problems
            charges = await conn.fetchval(
                "SELECT coalesce(sum(debits_posted), 0) FROM ledger.accounts WHERE kind = 1")
            earnings = await conn.fetchval(
                "SELECT coalesce(sum(credits_posted), 0) FROM ledger.accounts WHERE kind = 2")
            payouts = await conn.fetchval(
                "SELECT coalesce(sum(debits_posted), 0) FROM ledger.accounts WHERE kind = 2")
            fees = await conn.fetchval("SELECT credits_posted FROM ledger.accounts WHERE id = $1",
                                       __import__("uuid").UUID(bytes=well_known_account("platform:revenue", 1)))
            assert payouts == 0
            assert charges == earnings + fees, (charges, earnings, fees)
            metered = await conn.fetchval(
                "SELECT coalesce(sum(cost_micros), 0) FROM metering.usage WHERE settlement = 2")
            unsettled = await conn.fetchval(
                "SELECT count(*) FROM metering.usage WHERE settlement NOT IN (2, 3)")
            assert unsettled == 0
            assert metered == charges, (metered, charges)
        finally:
            await conn.close()


async def start_stack(config, db_url: str, *, metering_addr: str | None = None) -> Stack:
    """The services in-process; ``metering_addr``: use that metering (a child
    process) instead of one in-process."""
    ledger_srv = await ledger_service.start(config, port=0, database_url=db_url, sweep_interval_s=0.2)
    metering_srv = None
    if metering_addr is None:
        metering_srv = await metering_service.start(config, port=0, database_url=db_url,
                                                    ledger_addr=f"127.0.0.1:{ledger_srv.port}", poll_s=0.1)
        metering_addr = f"127.0.0.1:{metering_srv.port}"
    registry_srv = await registry_service.start(config, port=0, database_url=db_url, settings=RegistrySettings(
        heartbeat_interval_ms=500, sweep_interval_ms=50, load_report_interval_ms=100))
    scheduler_srv = await scheduler_service.start(
        config, port=0, ledger_addr=f"127.0.0.1:{ledger_srv.port}",
        metering_addr=metering_addr, registry_addr=f"127.0.0.1:{registry_srv.port}")
    chans = [open_channel(a, token=TOKEN) for a in (
        f"127.0.0.1:{ledger_srv.port}", metering_addr, f"127.0.0.1:{registry_srv.port}",
        f"127.0.0.1:{scheduler_srv.port}")]
    ledger = ledger_pb2_grpc.LedgerServiceStub(chans[0])
    registry = registry_pb2_grpc.RegistryServiceStub(chans[2])
    provider_account = os.urandom(16)
    await ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[
        lpb.Account(id=provider_account, ledger=1, kind=lpb.ACCOUNT_KIND_PROVIDER, flags=DMNEC)]))
    prov = await registry.CreateProvider(rpb.CreateProviderRequest(name="test-provider",
                                                                   ledger_account_id=provider_account))
    return Stack(config, db_url, ledger_srv, metering_srv, registry_srv, scheduler_srv, ledger,
                 metering_pb2_grpc.MeteringServiceStub(chans[1]), registry,
                 scheduler_pb2_grpc.SchedulerServiceStub(chans[3]), provider_account, prov.provider_token,
                 channels=chans)


async def stop_stack(s: Stack) -> None:
    for node in s.nodes.values():
        await node.agent.stop()
        await asyncio.to_thread(node.triton.stop)
    for ch in s.channels:
        await ch.close()
    for srv in (s.scheduler_srv, s.registry_srv, s.metering_srv, s.ledger_srv):
        if srv is not None:
            await srv.stop(1)


__all__ = ["Stack", "Node", "start_stack", "stop_stack", "mpb"]
