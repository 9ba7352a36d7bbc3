"""``idlegrid bench <what>``: benchmarks that print figures (never tests)."""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "ledger": "idlegrid.bench.ledger",
    "registry": "idlegrid.bench.registry",
    "dispatch": "idlegrid.bench.dispatch",
    "gateway": "idlegrid.bench.gateway",
    "relay": "idlegrid.bench.relay",
    "soak": "idlegrid.bench.soak",
    "trust": "idlegrid.bench.trust",
    "clearing": "idlegrid.bench.clearing",
    "hops": "idlegrid.bench.hops",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print its figures")
    p.add_argument("what", choices=sorted(BENCHES))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    p.add_argument("--duration-s", type=float, help="soak: seconds of traffic and chaos (default 120; 20 with --quick)")
    p.add_argument("--seed", type=int, help="soak: seed of the chaos schedule and the traffic mix (default 13); "
                                            "trust: seed of the corpus and the simulation (default 11)")
    p.add_argument("--replicas", type=int, default=1,
                   help="clearing: metering replicas sharing the load (production runs 2; default 1)")
    p.set_defaults(func=_bench)


async def _bench(args, config) -> int:
    module = importlib.import_module(BENCHES[args.what])
    return await module.run(args, config)
