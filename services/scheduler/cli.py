"""``idlegrid scheduler serve``."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("scheduler", help="routes jobs to nodes and dispatches them")
    ssub = p.add_subparsers(dest="scheduler_command", required=True)
    ssub.add_parser("serve", help="run the scheduler gRPC service").set_defaults(func=_serve)


async def _serve(args, config) -> int:
    from idlegrid.scheduler.service import serve

    await serve(config)
    return 0
