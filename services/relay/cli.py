"""``idlegrid relay serve``: one relay replica (the node links and the
KServe face for the marketplace, on IDLEGRID_RELAY_PORT)."""

from __future__ import annotations

import argparse

from idlegrid.common.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("relay", help="the relay that holds the nodes' links")
    rsub = p.add_subparsers(dest="relay_command", required=True)
    s = rsub.add_parser("serve", help="run a relay replica")
    s.add_argument("--window-replies", type=int, default=None,
                   help="replies a node may send per call before the caller consumes them (default 16)")
    s.add_argument("--calls-per-link-max", type=int, default=None, help="concurrent calls on one link (default 256)")
    s.add_argument("--links-max", type=int, default=None, help="links this replica holds (default 100000)")
    s.set_defaults(func=_serve)


def settings_from(args):
    from idlegrid.relay.settings import RelaySettings

    extra = {k: v for k, v in (("window_replies", args.window_replies),
                               ("calls_per_link_max", args.calls_per_link_max),
                               ("links_max", args.links_max)) if v is not None}
    return RelaySettings(**extra)


async def _serve(args, config: Config) -> int:
    from idlegrid.relay.service import serve

    await serve(config, settings_from(args))
    return 0
