"""The ``idlegrid`` command: one CLI for every service and tool."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from idlegrid.common import logs
from idlegrid.common.config import Config
from idlegrid.common.errors import IdlegridError


def _on_uvloop(args: argparse.Namespace) -> bool:
    """Plain asyncio for the gRPC services on purpose: grpc.aio servers ran at
    about half their throughput on uvloop here (measured with a trivial
    servicer). uvloop for what serves no gRPC: the benchmark clients, and the
    gateway (HTTP in, grpc.aio clients out), which needs less CPU per request
    on it (see ``idlegrid bench gateway``)."""
    return args.command == "bench" or (args.command == "gateway" and getattr(args, "gateway_command", "") == "serve")


def _run(coro_fn: Callable, args: argparse.Namespace, config: Config) -> int:
    runner = asyncio.run
    if _on_uvloop(args):
        import uvloop

        runner = uvloop.run
    try:
        return runner(coro_fn(args, config)) or 0
    except IdlegridError as e:
        print(f"idlegrid: {e.message}", file=sys.stderr)  # noqa: T201 - CLI output
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    from idlegrid.bench import cli as bench_cli
    from idlegrid.ledger import cli as ledger_cli

    parser = argparse.ArgumentParser(prog="idlegrid", description="idlegrid: inference on contributed GPUs")
    sub = parser.add_subparsers(dest="command", required=True)
    ledger_cli.register(sub)
    bench_cli.register(sub)
    for extra in _optional_modules():
        extra.register(sub)
    args = parser.parse_args(argv)
    try:
        config = Config.from_env()
    except IdlegridError as e:
        print(f"idlegrid: {e.message}", file=sys.stderr)  # noqa: T201
        return 2
    logs.configure(fmt=config.log_format, level=getattr(args, "log_level", None) or config.log_level)
    return _run(args.func, args, config)


def _optional_modules() -> list:
    """CLI parts of the other services, as they exist."""
    import importlib

    found = []
    for name in ("idlegrid.registry.cli", "idlegrid.cli.node", "idlegrid.scheduler.cli",
                 "idlegrid.metering.cli", "idlegrid.relay.cli", "idlegrid.gateway.cli", "idlegrid.cli.up",
                 "idlegrid.cli.migrate", "idlegrid.cli.people"):
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as e:
            if e.name and not name.startswith(e.name):
                raise
    return found


if __name__ == "__main__":
    sys.exit(main())
