"""The node's first registration. A registry that is down or restarting is
waited for, with jittered backoff up to ``wait_s``: a node started before
the marketplace is reachable (or while its registry restarts) joins when it
is. Any other refusal (a bad token, a bad offer) fails at once."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import structlog

from idlegrid.common.errors import DeadlineExceeded, Unavailable

log = structlog.get_logger("node.joining")


async def join(register: Callable[[], Awaitable[None]], *, wait_s: float, backoff_max_s: float) -> None:
    backoff_s, deadline = 0.1, time.monotonic() + wait_s
    while True:
        try:
            await register()
            return
        except (Unavailable, DeadlineExceeded) as e:
            if time.monotonic() + backoff_s > deadline:
                raise
            log.warning("node.registry_unreachable", error=e.message, retry_in_s=round(backoff_s, 2))
        await asyncio.sleep(backoff_s * (0.5 + random.random()))
        backoff_s = min(backoff_s * 2, backoff_max_s)
