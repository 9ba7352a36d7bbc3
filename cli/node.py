"""``idlegrid node start``: run the node agent on a provider's machine, in
front of the provider's Triton or (``--demo``) of the demo Triton. A command
and not part of the agent's package, because it puts the agent and the demo
together.

The node joins through a relay (``--relay``, default $IDLEGRID_RELAY_ADDR):
one outbound connection, so it works from behind NAT and its Triton stays on
loopback. ``--direct`` registers the Triton's address (node.toml ``endpoint``
or ``--triton-url``) instead, for datacenter nodes on marketplaces whose
operator enabled direct endpoints."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path

import structlog

from idlegrid.common.config import Config
from idlegrid.common.errors import ConfigError
from idlegrid.demo.names import CHEAT_MODES

log = structlog.get_logger("node")

RELAYS_MAX = 16


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="the provider node agent")
    nsub = p.add_subparsers(dest="node_command", required=True)
    s = nsub.add_parser("start", help="register this node's Triton, heartbeat, drain on SIGTERM")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--triton-url", help="this node's Triton gRPC address, host:port")
    src.add_argument("--demo", action="store_true", help="start the demo Triton (CPU) and offer its models")
    s.add_argument("--config", type=Path, help="node config file (TOML; see services/node/config_file.py); "
                                               "optional with --demo")
    s.add_argument("--metrics-url", help="Triton's metrics URL (http://host:8002/metrics), for queue depth")
    s.add_argument("--provider-token-file", type=Path, help="file holding the provider token "
                                                            "(or provider_token_file in the config)")
    s.add_argument("--registry", help="registry address (default $IDLEGRID_REGISTRY_ADDR)")
    s.add_argument("--relay", help="relay address(es), HOST:PORT[,HOST:PORT] (default $IDLEGRID_RELAY_ADDR)")
    s.add_argument("--direct", action="store_true",
                   help="register the Triton's address as a direct endpoint instead of linking through a relay "
                        "(only where the operator enabled direct endpoints)")
    s.add_argument("--cheat", choices=CHEAT_MODES,
                   help="with --demo: a cheating node, for tests and drills (see idlegrid/demo/cheats.py)")
    s.add_argument("--cheat-rate", type=float, default=1.0, help="with --cheat: the share of jobs cheated on "
                                                                 "(default 1)")
    s.add_argument("--cheat-after", type=int, default=0, help="with --cheat: serve this many jobs honestly first "
                                                             "(as a cheater passes verification)")
    s.add_argument("--node-id-file", type=Path,
                   help="keeps the node id across restarts (default $IDLEGRID_HOME/node-id)")
    s.set_defaults(func=_start)


def _read_token(path: Path | None) -> str:
    if path is None:
        raise ConfigError("a provider token is required: --provider-token-file or provider_token_file")
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the provider token file {path}: {e}") from None
    if not token:
        raise ConfigError(f"the provider token file {path} is empty")
    return token


def relays(value: str) -> tuple[str, ...]:
    """``HOST:PORT[,HOST:PORT]`` → the relay addresses."""
    addrs = tuple(a.strip() for a in value.split(",") if a.strip())
    if not addrs or len(addrs) > RELAYS_MAX or not all(a.rpartition(":")[2].isdigit() for a in addrs):
        raise ConfigError(f"--relay must be 1..{RELAYS_MAX} HOST:PORT separated by commas, got {value!r}")
    return addrs


def _read_node_id(path: Path) -> bytes | None:
    try:
        return uuid.UUID(path.read_text().strip()).bytes
    except FileNotFoundError:
        return None
    except ValueError:
        raise ConfigError(f"{path} does not hold a node id (UUID)") from None


async def _start(args, config: Config) -> int:
    from idlegrid.common.server import wait_for_signal
    from idlegrid.node import config_file
    from idlegrid.node.agent import AgentOptions, NodeAgent, VerificationFailed
    from idlegrid.registry.v1 import registry_pb2 as pb

    node_config = config_file.load(args.config) if args.config else None
    if node_config is None and not args.demo:
        raise ConfigError("--config is required with --triton-url")
    if args.cheat and not args.demo:
        raise ConfigError("--cheat needs --demo (it is a mode of the demo node)")
    if not 0.0 <= args.cheat_rate <= 1.0:
        raise ConfigError(f"--cheat-rate must be in [0, 1], got {args.cheat_rate}")
    demo = None
    triton_url, metrics_url = args.triton_url, args.metrics_url
    if args.demo:
        from idlegrid.cli import demo_node
        from idlegrid.demo.launcher import start_demo_triton

        node_config = node_config or await asyncio.to_thread(demo_node.node_config)
        demo = await asyncio.to_thread(start_demo_triton, cheat=args.cheat, cheat_rate=args.cheat_rate,
                                       cheat_after=args.cheat_after)
        triton_url, metrics_url = demo.grpc_url, metrics_url or demo.metrics_url
    id_file = args.node_id_file or config.home / "node-id"
    relay_addrs = () if args.direct else relays(args.relay or config.addrs["relay"])
    agent = NodeAgent(AgentOptions(
        registry_addr=args.registry or config.addrs["registry"],
        provider_token=_read_token(args.provider_token_file or node_config.provider_token_file),
        triton_url=triton_url, metrics_url=metrics_url, node_config=node_config,
        node_id=_read_node_id(id_file), channel_config=config, relay_addrs=relay_addrs,
        triton_pids=frozenset(demo.live_pids()) if demo is not None else frozenset()))
    try:
        await agent.start()
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(f"{uuid.UUID(bytes=agent.node_id)}\n")
        log.info("node.started", node_id=str(uuid.UUID(bytes=agent.node_id)), triton=triton_url,
                 relay=",".join(relay_addrs) or "(direct)")
        stop = asyncio.create_task(wait_for_signal())
        ready = asyncio.create_task(agent.wait_for(pb.NODE_STATE_READY, timeout_s=None))
        await asyncio.wait({stop, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and isinstance(ready.exception(), VerificationFailed):
            stop.cancel()
            log.error("node.refused", detail=agent.detail, hint="fix the node's Triton or its config, then start again")
            await agent.deregister()
            return 1
        ready.cancel()
        if not stop.done():
            log.info("node.ready", node_id=str(uuid.UUID(bytes=agent.node_id)))
        await stop
        log.info("node.stopping", note="draining: no new work, waiting for in-flight work, then deregistering")
        await agent.drain()
    finally:
        await agent.stop()
        if demo is not None:
            await asyncio.to_thread(demo.stop)
    return 0
