"""The one way a test waits for something: poll a condition until it holds.

A test waits on an event when one exists (a stream message, a future); it
polls with :func:`eventually` when the condition lives elsewhere (another
process, a database row, a counter). It never sleeps a fixed time and never
asserts how long something took: the timeout only stops a broken test from
hanging, so it is generous and is not part of what the test checks.
"""

from __future__ import annotations

import asyncio
import inspect

WAIT_S = 120.0  # an upper bound so a broken test fails instead of hanging; never a threshold
EVERY_S = 0.02


async def eventually(check, *, what: str = "the condition", timeout_s: float = WAIT_S,
                     every_s: float = EVERY_S):
    """Calls ``check()`` (sync or async) until it returns something truthy and
    returns that value. Fails with ``AssertionError`` naming ``what`` when
    ``timeout_s`` passes first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout_s:g} s")
        await asyncio.sleep(every_s)
