"""A node started while its registry is down (or restarting) joins once the
registry answers, instead of exiting; a real refusal still fails at once."""

from __future__ import annotations

import pytest

from idlegrid.common.errors import PermissionDenied, Unavailable
from idlegrid.node.joining import join


async def test_the_first_registration_waits_for_an_unreachable_registry():
    calls = []

    async def register():
        calls.append(1)
        if len(calls) < 4:
            raise Unavailable("registry down")

    await join(register, wait_s=60, backoff_max_s=0.01)
    assert len(calls) == 4


async def test_a_refusal_is_not_retried_and_the_wait_is_bounded():
    async def refused():
        raise PermissionDenied("bad provider token")

    with pytest.raises(PermissionDenied):
        await join(refused, wait_s=60, backoff_max_s=0.01)

    async def down():
        raise Unavailable("registry down")

    with pytest.raises(Unavailable):
        await join(down, wait_s=0.05, backoff_max_s=0.01)
