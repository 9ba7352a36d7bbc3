"""Command line: run the demo Triton in the foreground until SIGTERM/SIGINT.

    python -m idlegrid.demo --grpc-port 8001 --http-port 8000 --metrics-port 8002

A port of 0 (the default) picks a free one; the ``demo_triton_ready`` log
line says which.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import structlog

from idlegrid.common import logs
from idlegrid.demo.cheats import CheatOptions
from idlegrid.demo.names import CHEAT_MODES, MODEL_NAMES
from idlegrid.demo.server import DEFAULT_HOST, ServeOptions, serve
from idlegrid.demo.smollm2 import N_THREADS_DEFAULT

_PARENT_CHECK_S = 1.0

log = structlog.get_logger(__name__)


def _stop_when_orphaned(parent_pid: int, stop: threading.Event) -> None:
    # Reparenting means the launcher died without stopping us (killed, or a
    # test run interrupted): shut down rather than serve forever, unowned.
    while not stop.wait(_PARENT_CHECK_S):
        if os.getppid() != parent_pid:
            log.warning("demo_triton_parent_gone", parent_pid=parent_pid)
            stop.set()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m idlegrid.demo", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default %(default)s)")
    p.add_argument("--grpc-port", type=int, default=0, help="0 = pick a free port")
    p.add_argument("--http-port", type=int, default=0, help="0 = pick a free port")
    p.add_argument("--metrics-port", type=int, default=0, help="0 = pick a free port")
    p.add_argument(
        "--models",
        default=",".join(MODEL_NAMES),
        help="comma-separated subset of %(default)s",
    )
    p.add_argument("--llm-delay-ms", type=int, default=0, help="extra delay per generated token")
    p.add_argument("--fail", action="store_true", help="every inference returns an error")
    p.add_argument("--fail-after", type=int, default=-1,
                   help="each model serves this many requests, then every inference errors")
    p.add_argument("--llm-extra-tokens", type=int, default=0,
                   help="a flooding node: generate this many tokens past max_tokens")
    p.add_argument("--cheat", choices=CHEAT_MODES, default=None,
                   help="a cheating node, for tests and drills (see idlegrid/demo/cheats.py)")
    p.add_argument("--cheat-rate", type=float, default=1.0, help="share of jobs cheated on (default 1)")
    p.add_argument("--cheat-seed", type=int, default=0, help="seed of which jobs are cheated on")
    p.add_argument("--cheat-after", type=int, default=0,
                   help="serve this many language-model jobs honestly first (to pass verification)")
    p.add_argument("--n-threads", type=int, default=N_THREADS_DEFAULT, help="llama.cpp threads")
    p.add_argument(
        "--workspace", type=Path, default=None, help="pytriton workspace (must not exist)"
    )
    p.add_argument("--parent-pid", type=int, default=None, help="stop when this process exits")
    p.add_argument("--log-format", default="auto", choices=("auto", "json", "console"))
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(fmt=args.log_format, level=args.log_level)
    # pytriton and tritonserver report through the standard logging module.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    options = ServeOptions(
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        models=tuple(m for m in args.models.split(",") if m),
        llm_delay_ms=args.llm_delay_ms,
        fail=args.fail,
        fail_after=args.fail_after,
        llm_extra_tokens=args.llm_extra_tokens,
        n_threads=args.n_threads,
        workspace=args.workspace,
        cheat=CheatOptions(args.cheat, args.cheat_rate, args.cheat_seed, args.cheat_after),
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if args.parent_pid is not None:
        threading.Thread(
            target=_stop_when_orphaned,
            args=(args.parent_pid, stop),
            name="parent-watch",
            daemon=True,
        ).start()
    serve(options, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
