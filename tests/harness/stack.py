"""The one builder for the services a test runs: any prefix of the money path
(ledger, registry, metering, relay, scheduler, gateway), each a real server
in-process on a free port, on one database. Node agents join with
:meth:`Stack.add_node`, through the relay (linked mode, as nodes behind NAT
do) when one runs; the Tritons behind them come from the session pool.
:meth:`Stack.add_relay` starts another relay replica.

    stack = await start_stack(config, db_url)                 # all but the gateway
    stack = await start_stack(config, db_url, parts=PARTS)    # everything
    stack = await start_stack(config, db_url, parts=("ledger",))
    await stack.add_node("a")
    ...
    await stack.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from idlegrid.common.channel import open_channel
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.ledger.v1 import ledger_pb2_grpc
from idlegrid.metering.v1 import metering_pb2_grpc
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.registry.v1 import registry_pb2_grpc
from idlegrid.scheduler.v1 import scheduler_pb2_grpc
from tests.harness import servers
from tests.harness.basics import TOKEN

PARTS, BACKEND = servers.ORDER, servers.BACKEND
DMNEC = lpb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
_STUBS = {"ledger": ledger_pb2_grpc.LedgerServiceStub, "metering": metering_pb2_grpc.MeteringServiceStub,
          "registry": registry_pb2_grpc.RegistryServiceStub,
          "scheduler": scheduler_pb2_grpc.SchedulerServiceStub}


@dataclass
class Stack:
    """Running services (``servers`` by part name), their addresses, a stub
    per gRPC service (with the service token), and the nodes that joined."""

    config: object
    db_url: str
    servers: dict[str, object] = field(default_factory=dict)
    addrs: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, object] = field(default_factory=dict)  # name -> agents.Node
    provider_account: bytes = b""
    provider_token: str = ""
    extra: dict = field(default_factory=dict)
    stubs: dict[str, object] = field(default_factory=dict)
    channels: list = field(default_factory=list)
    relays: list = field(default_factory=list)  # replicas beyond the first (add_relay)

    # -- parts
    @property
    def ledger(self) -> ledger_pb2_grpc.LedgerServiceStub:
        return self.stubs["ledger"]

    @property
    def metering(self) -> metering_pb2_grpc.MeteringServiceStub:
        return self.stubs["metering"]

    @property
    def registry(self) -> registry_pb2_grpc.RegistryServiceStub:
        return self.stubs["registry"]

    @property
    def scheduler(self) -> scheduler_pb2_grpc.SchedulerServiceStub:
        return self.stubs["scheduler"]

    @property
    def ledger_srv(self):
        return self.servers.get("ledger")

    @property
    def metering_srv(self):
        return self.servers.get("metering")

    @property
    def registry_srv(self):
        return self.servers.get("registry")

    @property
    def relay_srv(self):
        return self.servers.get("relay")

    def relay_addrs(self) -> tuple[str, ...]:
        """Every running relay replica, the first one first (what agents dial)."""
        first = (self.addrs["relay"],) if "relay" in self.addrs else ()
        return first + tuple(f"{servers.dial_host(self.config)}:{r.port}" for r in self.relays)

    async def add_relay(self):
        """Another relay replica on a free port, for the same registry."""
        from idlegrid.relay import service

        relay = await service.start(self.config, port=0, **servers.options("relay", self.addrs, self.db_url))
        self.relays.append(relay)
        return relay

    @property
    def scheduler_srv(self):
        return self.servers.get("scheduler")

    @property
    def gateway_srv(self):
        return self.servers.get("gateway")

    @property
    def table(self):
        """The scheduler's live view of the nodes."""
        return self.scheduler_srv.parts["table"]

    # -- nodes and money
    # The node agent, the ledger's audit and metering are imported on use:
    # a stack of one service imports only that service.
    async def add_node(self, name: str, **kw):
        """A node agent named ``name`` (label ``node=name``) registered and
        READY; see agents.add_node for the options."""
        from tests.harness import agents

        node = await agents.add_node(self, name, **kw)
        self.nodes[name] = node
        return node

    async def routable(self, node) -> None:
        from tests.harness import agents

        await agents.routable(self, node)

    async def consumer(self, credits: int) -> bytes:
        """A new consumer ledger account holding ``credits`` micro-credits."""
        from tests.harness import books

        return await books.consumer(self.ledger, credits)

    async def balances(self, ids: list[bytes]) -> list[lpb.Account]:
        return list((await self.ledger.LookupAccounts(lpb.LookupAccountsRequest(ids=ids))).accounts)

    async def settled(self) -> None:
        """Waits until every job's usage is recorded and settled."""
        from tests.harness import books

        await books.settled(self)

    async def check_books(self) -> None:
        from tests.harness import books

        await books.check_books(self)

    async def stop(self, *, grace_s: float = 1.0) -> None:
        """Stops the nodes (and the Tritons they own), then the services,
        last started first."""
        if self.nodes:
            from tests.harness import agents

            await asyncio.gather(*(agents.stop_node(n) for n in self.nodes.values()))
            self.nodes.clear()
        for ch in self.channels:
            await ch.close()
        while self.relays:
            await self.relays.pop().stop(grace_s)
        for part in reversed(PARTS):
            srv = self.servers.pop(part, None)
            if srv is not None:
                await srv.stop(grace_s)


async def start_stack(config, db_url: str, *, parts: tuple[str, ...] = BACKEND, provider: bool = True,
                      metering_addr: str | None = None, ports: dict[str, int] | None = None,
                      registry_settings=None, gateway_settings=None, metering_settings=None) -> Stack:
    """Starts ``parts`` in dependency order (each needs the ones before it in
    PARTS that it talks to). ``metering_addr``: use that metering (a child
    process) instead of starting one. ``provider``: when the ledger and the
    registry run, create a provider (its ledger account and registry token)
    for the nodes to join under. ``registry_settings``: by default nodes
    heartbeat every half second (servers.py). ``metering_settings``: by
    default earnings are posted at settlement (servers.metering_settings;
    pass ``servers.metering_settings(earnings_hold_s=N)`` to hold them)."""
    stack = Stack(config, db_url)
    if metering_addr is not None:
        stack.addrs["metering"] = metering_addr
    try:
        await servers.start(stack, parts, ports=ports or {}, registry_settings=registry_settings,
                            gateway_settings=gateway_settings, metering_settings_=metering_settings)
        for part, stub in _STUBS.items():
            if part in stack.addrs:
                ch = open_channel(stack.addrs[part], token=TOKEN)
                stack.channels.append(ch)
                stack.stubs[part] = stub(ch)
        if "registry" in stack.servers:
            await seed_catalog(stack)
        if provider and {"ledger", "registry"} <= stack.stubs.keys():
            await _create_provider(stack)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to see
            await stack.stop()
        raise
    return stack


async def stop_stack(stack: Stack) -> None:
    await stack.stop()


# The demo models' canary references, kept across test runs (computed once).
CANARY_CACHE = Path(tempfile.gettempdir()) / "idlegrid-test-canaries"


async def seed_catalog(stack: Stack) -> None:
    """The demo models in the registry's catalog, as ``idlegrid up`` puts
    them: nodes offer only catalog models (imported on use: the demo's
    reference outputs need the node extras)."""
    from idlegrid.cli import demo_catalog

    await demo_catalog.seed(stack.registry, actor="test-harness", cache_dir=CANARY_CACHE)


async def _create_provider(stack: Stack) -> None:
    stack.provider_account = os.urandom(16)
    await stack.ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[lpb.Account(
        id=stack.provider_account, ledger=1, kind=lpb.ACCOUNT_KIND_PROVIDER, flags=DMNEC)]))
    r = await stack.registry.CreateProvider(rpb.CreateProviderRequest(
        name="test-provider", ledger_account_id=stack.provider_account))
    stack.provider_token = r.provider_token
