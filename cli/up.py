"""``idlegrid up``: the whole marketplace on one machine.

Starts the embedded PostgreSQL (or uses IDLEGRID_DATABASE_URL), the ledger,
registry (with the demo models in its catalog), metering, relay, scheduler and
gateway services in this process, and a demo provider node (a real Triton on the CPU, on loopback, with its node
agent) that joins through the relay like any node behind NAT; creates a demo
partner with credits, a demo provider and their keys; prints how to use them
and writes them (and ``relay_addr``) to ``$IDLEGRID_HOME/demo.json``.
``--no-demo-node`` starts everything but the demo node (join your own with
``idlegrid node start --relay``). Ctrl-C (or SIGTERM) stops everything at
any moment, start-up included: what started stops in reverse order, the
database last; a second Ctrl-C kills what is left, and still stops the
database (cli/up_parts.py). A second run reuses the data and the demo
accounts, also after a crash (a stale ``postmaster.pid`` is recovered)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
import uuid
from pathlib import Path

from idlegrid.cli.up_parts import Parts, Signals, finish, say, start_demo_triton
from idlegrid.common import db, logs
from idlegrid.common.config import Config
from idlegrid.common.errors import ConfigError

DEMO_CREDITS_MICROS = 100_000_000  # 100 credits


def register(sub) -> None:
    p = sub.add_parser("up", help="run the whole marketplace on this machine, with a demo node")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                   help="service logs on stderr (default: warning)")
    p.add_argument("--relay-listen", metavar="HOST:PORT",
                   help="where the relay listens for node agents (default 127.0.0.1:$IDLEGRID_RELAY_PORT); "
                        "0.0.0.0:PORT lets nodes on other machines join")
    p.add_argument("--no-demo-node", dest="demo_node", action="store_false",
                   help="start everything but the demo node")
    p.set_defaults(func=_up)


def _listen(value: str | None, default_port: int) -> tuple[str, int]:
    """HOST:PORT of --relay-listen (ConfigError when malformed)."""
    if not value:
        return "127.0.0.1", default_port
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--relay-listen must be HOST:PORT, got {value!r}")
    return host, int(port)


def _advertised(host: str, port: int) -> str:
    """The relay address the services on this machine and the demo node dial."""
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Step:
    def __init__(self, n: int, total: int, what: str) -> None:
        self.label = f"[{n}/{total}] {what}"

    def __enter__(self):
        self.t = time.monotonic()
        sys.stdout.write(self.label + " ... ")
        sys.stdout.flush()
        return self

    def __exit__(self, exc_type, exc, tb):
        took = time.monotonic() - self.t
        if exc is None:
            say(f"done ({took:.1f} s)")
        else:
            say("interrupted" if isinstance(exc, asyncio.CancelledError) else f"FAILED: {exc}")
        return False


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _read_demo(path: Path) -> dict | None:
    """The demo accounts and keys of an earlier run, if complete."""
    if not path.exists():
        return None
    demo = json.loads(path.read_text())
    if all(demo.get(k) for k in ("consumer_key", "provider_key", "admin_key", "provider_token")):
        return demo
    return None


async def _demo_accounts(gateway, existing: dict | None) -> dict:
    """The demo accounts and keys: reused from the last run, else created.
    The admin key is new on every run: admin keys expire (30 days)."""
    if existing is not None:
        _, existing["admin_key"] = await gateway.create_key(scope="admin")
        return existing
    suffix = secrets.token_hex(3)
    partner = await gateway.create_account(kind="consumer", name=f"demo-partner-{suffix}")
    await gateway.top_up(partner.account_id, DEMO_CREDITS_MICROS, f"demo-initial-credits-{suffix}")
    provider = await gateway.create_account(kind="provider", name=f"demo-provider-{suffix}")
    _, consumer_key = await gateway.create_key(scope="consumer", account_id=partner.account_id)
    _, provider_key = await gateway.create_key(scope="provider", account_id=provider.account_id)
    _, admin_key = await gateway.create_key(scope="admin")
    return {
        "consumer_account_id": str(uuid.UUID(bytes=partner.account_id)),
        "provider_account_id": str(uuid.UUID(bytes=provider.account_id)),
        "provider_id": str(uuid.UUID(bytes=provider.provider_id)),
        "consumer_key": consumer_key, "provider_key": provider_key, "admin_key": admin_key,
        "provider_token": provider.provider_token,
    }


def _examples(demo: dict) -> str:
    url = demo["gateway_url"]
    return f"""
idlegrid is up.

  gateway        {url}   (API docs: {url}/docs)
  console        {url}/console   (sign in with a key below)
  relay          {demo['relay_addr']}   (nodes join: idlegrid node start --relay {demo['relay_addr']} ...)
  consumer key   {demo['consumer_key']}
  provider key   {demo['provider_key']}
  admin key      {demo['admin_key']}
  (also in {demo['demo_file']}, readable only by you)

Try it:

  curl -s {url}/v1/chat/completions \\
    -H "Authorization: Bearer {demo['consumer_key']}" -H 'Content-Type: application/json' \\
    -d '{{"model": "smollm2-135m-instruct", "max_tokens": 32,
         "messages": [{{"role": "user", "content": "Say hello in French."}}]}}'

  python3 - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="{demo['consumer_key']}")
  r = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=32,
      messages=[{{"role": "user", "content": "Say hello in French."}}])
  print(r.choices[0].message.content, r.usage)
  PY

  idlegrid account                  # the partner's balance
  idlegrid provider earnings        # what the demo provider earned
  idlegrid ledger verify            # prove the books

Ctrl-C stops everything.
"""


async def _seed_catalog(config: Config, port: int) -> None:
    """The demo models in the catalog (nodes offer only catalog models), as
    the operator: their reference outputs are computed once and kept in
    $IDLEGRID_HOME; an operator's price ceilings are kept."""
    from idlegrid.cli import demo_catalog
    from idlegrid.common.channel import open_channel
    from idlegrid.common.identities import OPERATOR
    from idlegrid.registry.v1 import registry_pb2_grpc

    # Under mTLS the operator's certificate names it (no token).
    async with open_channel(f"127.0.0.1:{port}", token=config.token_for(OPERATOR), config=config) as ch:
        await demo_catalog.seed(registry_pb2_grpc.RegistryServiceStub(ch), actor="idlegrid-up",
                                cache_dir=config.home)


async def _up(args, config: Config) -> int:
    logs.configure(fmt=config.log_format, level=args.log_level)
    relay_listen = _listen(args.relay_listen, config.ports["relay"])
    signals, parts = Signals(), Parts()
    say(f"idlegrid up: data in {config.home}")
    with signals.installed():
        run = asyncio.create_task(_run(args, config, relay_listen, parts, signals), name="idlegrid-up")
        signals.target = run
        try:
            await run
        except asyncio.CancelledError:
            if not signals.requested.is_set():
                raise
            say("\nstopping ...")
        finally:
            await parts.stop_all(signals)
    say("stopped.")
    return 0


async def _run(args, config: Config, relay_listen: tuple[str, int], parts: Parts, signals: Signals) -> None:
    """The start-up steps, then the wait for a signal (which cancels this)."""
    from idlegrid.cli import demo_node
    from idlegrid.common import embedded_pg
    from idlegrid.demo import start_demo_triton as launch_demo_triton
    from idlegrid.gateway import service as gateway_service
    from idlegrid.ledger import service as ledger_service
    from idlegrid.metering import service as metering_service
    from idlegrid.node.agent import AgentOptions, NodeAgent
    from idlegrid.registry import service as registry_service
    from idlegrid.registry.v1.registry_pb2 import NODE_STATE_READY as READY
    from idlegrid.relay import service as relay_service
    from idlegrid.scheduler import service as scheduler_service

    relay_host, relay_port = relay_listen
    demo_path = config.home / "demo.json"
    total = 9 if args.demo_node else 8

    def server(s, name: str) -> None:
        parts.add(name, s.stop, lambda: s.stop(grace_s=0))

    with _Step(1, total, "database" + (" (IDLEGRID_DATABASE_URL)" if config.database_url
                                         else f" (embedded PostgreSQL in {config.home / 'pg'})")):
        if not config.database_url:  # whatever happens next, it stops with us
            parts.add("database", lambda: asyncio.to_thread(embedded_pg.stop, config.home),
                      lambda: asyncio.to_thread(embedded_pg.stop, config.home, fast=True))
        url = await finish(db.resolve_url(config))
    with _Step(2, total, f"ledger on :{config.ports['ledger']}"):
        server(await ledger_service.start(config, database_url=url), "ledger")
    with _Step(3, total, f"metering on :{config.ports['metering']}"):
        server(await metering_service.start(config, database_url=url), "metering")
    with _Step(4, total, f"registry on :{config.ports['registry']}, with the demo models in its catalog"):
        reg = await registry_service.start(config, database_url=url)
        server(reg, "registry")
        await _seed_catalog(config, reg.port)
    with _Step(5, total, f"relay on {relay_host}:{relay_port}"):
        advertise = config.relay_advertise_addr or (_advertised(relay_host, relay_port) if relay_port else None)
        relay = await relay_service.start(config, host=relay_host, port=relay_port, advertise_addr=advertise)
        server(relay, "relay")
        relay_addr = relay.advertise_addr
    with _Step(6, total, f"scheduler on :{config.ports['scheduler']}"):
        server(await scheduler_service.start(config), "scheduler")
    with _Step(7, total, f"gateway on :{config.ports['gateway']}"):
        gw = await gateway_service.start(config, database_url=url)
        server(gw, "gateway")
    with _Step(8, total, "demo accounts and keys"):
        demo = await _demo_accounts(gw, _read_demo(demo_path))
        demo["gateway_url"] = f"http://127.0.0.1:{gw.port}"
        demo["relay_addr"] = relay_addr
        _write_private(demo_path, json.dumps(demo, indent=2) + "\n")
    if args.demo_node:
        with _Step(9, total, "demo provider node, joining through the relay (a real Triton on the CPU, "
                             "on loopback; the first start loads the model)"):
            triton = await start_demo_triton(launch_demo_triton, signals)
            parts.add("demo Triton", lambda: asyncio.to_thread(triton.stop),
                      lambda: asyncio.to_thread(triton.kill))
            node_id = uuid.UUID(demo["node_id"]).bytes if demo.get("node_id") else None
            agent = NodeAgent(AgentOptions(
                registry_addr=f"127.0.0.1:{reg.port}", provider_token=demo["provider_token"],
                triton_url=triton.grpc_url, metrics_url=triton.metrics_url, relay_addrs=(relay_addr,),
                node_config=await asyncio.to_thread(demo_node.node_config), node_id=node_id,
                channel_config=config))
            ready = False

            async def leave() -> None:
                if ready:
                    say("  draining the demo node ...")
                    await agent.drain()
                else:
                    await agent.stop()

            parts.add("demo node agent", leave, agent.stop)
            await agent.start()
            await agent.wait_for(READY, timeout_s=180)
            ready = True
            demo["node_id"] = str(uuid.UUID(bytes=agent.node_id))
            _write_private(demo_path, json.dumps(demo, indent=2) + "\n")
    demo["demo_file"] = str(demo_path)
    say(_examples(demo))
    await asyncio.Event().wait()  # until a signal cancels this
