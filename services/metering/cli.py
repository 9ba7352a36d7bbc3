"""``idlegrid metering serve``."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("metering", help="usage records and settlement")
    msub = p.add_subparsers(dest="metering_command", required=True)
    msub.add_parser("serve", help="run the metering gRPC service").set_defaults(func=_serve)


async def _serve(args, config) -> int:
    from idlegrid.metering.service import serve

    await serve(config)
    return 0
