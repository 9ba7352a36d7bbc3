"""``idlegrid registry serve | create-provider | nodes``."""

from __future__ import annotations

import argparse
import sys
import uuid

from idlegrid.common.config import Config
from idlegrid.common.errors import InvalidArgument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("registry", help="the node registry")
    rsub = p.add_subparsers(dest="registry_command", required=True)
    s = rsub.add_parser("serve", help="run the registry gRPC service")
    s.add_argument("--heartbeat-interval-ms", type=int, default=None,
                   help="interval the registry asks agents to heartbeat at (default 5000)")
    s.add_argument("--lease-intervals", type=int, default=None,
                   help="missed intervals before a node goes offline (default 3)")
    s.add_argument("--skip-verification", action="store_true",
                   help="BENCHMARKS ONLY: mark nodes ready without checking their Triton")
    s.set_defaults(func=_serve)
    c = rsub.add_parser("create-provider", help="create a provider and print its token (shown once)")
    c.add_argument("name")
    c.add_argument("--ledger-account", required=True, help="ledger account id (UUID) that receives earnings")
    c.set_defaults(func=_create_provider)
    n = rsub.add_parser("nodes", help="list the nodes the registry knows")
    n.add_argument("--model", default="", help="only nodes serving this model")
    n.set_defaults(func=_nodes)


def settings_from(args):
    """The RegistrySettings that ``registry serve``'s flags and the
    environment (the direct-endpoint policy) ask for."""
    import os

    from idlegrid.registry.settings import RegistrySettings

    extra = {}
    if args.heartbeat_interval_ms is not None:
        extra["heartbeat_interval_ms"] = args.heartbeat_interval_ms
    if args.lease_intervals is not None:
        extra["lease_intervals"] = args.lease_intervals
    return RegistrySettings.from_env(os.environ, skip_verification=args.skip_verification, **extra)


async def _serve(args, config: Config) -> int:
    from idlegrid.registry.service import serve

    await serve(config, settings_from(args))
    return 0


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


async def _create_provider(args, config: Config) -> int:
    from idlegrid.common.channel import open_channel
    from idlegrid.registry.v1 import registry_pb2 as pb
    from idlegrid.registry.v1 import registry_pb2_grpc

    try:
        account = uuid.UUID(args.ledger_account).bytes
    except ValueError:
        raise InvalidArgument(f"--ledger-account must be a UUID, got {args.ledger_account!r}") from None
    async with open_channel(config.addrs["registry"], token=config.token(), config=config) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        r = await _call(stub.CreateProvider(pb.CreateProviderRequest(name=args.name, ledger_account_id=account),
                                            timeout=10))
    out(f"provider {uuid.UUID(bytes=r.provider.provider_id)} {r.provider.name}")
    out(f"provider token (shown once, keep it secret): {r.provider_token}")
    return 0


async def _nodes(args, config: Config) -> int:
    from idlegrid.common.channel import open_channel
    from idlegrid.common.node_states import REASON_NAMES, STATE_NAMES
    from idlegrid.common.paging import PAGE_SIZE_MAX
    from idlegrid.registry.v1 import registry_pb2 as pb
    from idlegrid.registry.v1 import registry_pb2_grpc

    async with open_channel(config.addrs["registry"], token=config.token(), config=config) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        token = b""
        while True:
            request = pb.ListNodesRequest(page_size=PAGE_SIZE_MAX, page_token=token, model=args.model)
            r = await _call(stub.ListNodes(request, timeout=10))
            for n in r.nodes:
                models = ",".join(m.offer.name for m in n.models)
                where = n.endpoint or (f"via {n.link.relay_addr}" if n.HasField("link") else "(no link)")
                out(f"{uuid.UUID(bytes=n.node_id)} {STATE_NAMES[n.state]:9} {where:24} {models}"
                    f"  ({REASON_NAMES.get(n.state_reason, '?')}: {n.state_detail})")
            token = r.next_page_token
            if not token:
                return 0


async def _call(awaitable):
    import grpc

    from idlegrid.common.errors import from_rpc_error

    try:
        return await awaitable
    except grpc.RpcError as e:
        raise from_rpc_error(e) from None
