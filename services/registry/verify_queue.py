"""The verification queue: fair across providers, so one provider's slow
nodes cannot starve everyone else's verification.

At most ``total_max`` verifications run at once, and at most ``per_key_max``
of one provider. Waiters queue per provider (FIFO within a provider); when a
slot frees, providers are served round-robin: the next provider after the
provider served least recently (a provider not served yet first) that has
a waiter and room under its own bound. A provider
that registers a hundred slow nodes holds ``per_key_max`` slots; each other
provider's next node runs within one round.

    async with queue.slot(provider_id):
        ...  # verify one node
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Hashable


class FairSlots:
    def __init__(self, *, total_max: int, per_key_max: int) -> None:
        assert total_max >= 1 and per_key_max >= 1
        self.total_max = total_max
        self.per_key_max = per_key_max
        self._running: dict[Hashable, int] = {}
        self._total = 0
        self._waiting: OrderedDict[Hashable, deque[asyncio.Future]] = OrderedDict()  # in arrival order
        # When each provider that runs or waits was last served (a counter);
        # forgotten once it does neither, so it stays bounded.
        self._served: dict[Hashable, int] = {}
        self._turn = 0

    @property
    def running(self) -> int:
        return self._total

    def waiting(self, key: Hashable | None = None) -> int:
        if key is not None:
            return len(self._waiting.get(key, ()))
        return sum(len(q) for q in self._waiting.values())

    @contextlib.asynccontextmanager
    async def slot(self, key: Hashable):
        """Waits for a slot for ``key``, holds it for the block."""
        await self._acquire(key)
        try:
            yield
        finally:
            self._release(key)

    async def _acquire(self, key: Hashable) -> None:
        granted = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(granted)
        self._dispatch()
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release(key)  # granted just as the waiter was cancelled
            else:
                self._forget(key, granted)
            raise

    def _forget(self, key: Hashable, granted: asyncio.Future) -> None:
        queue = self._waiting.get(key)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(granted)
        if not queue:
            del self._waiting[key]
            self._tidy(key)

    def _tidy(self, key: Hashable) -> None:
        if key not in self._waiting and key not in self._running:
            self._served.pop(key, None)

    def _release(self, key: Hashable) -> None:
        left = self._running[key] - 1
        if left:
            self._running[key] = left
        else:
            del self._running[key]
        self._total -= 1
        assert self._total >= 0
        self._tidy(key)
        self._dispatch()

    def _dispatch(self) -> None:
        """Grants free slots, round-robin over the providers that wait."""
        while self._total < self.total_max:
            room = [k for k in self._waiting if self._running.get(k, 0) < self.per_key_max]
            if not room:
                return
            key = min(room, key=lambda k: self._served.get(k, -1))  # min keeps arrival order on ties
            queue = self._waiting[key]
            granted = queue.popleft()
            if not queue:
                del self._waiting[key]
            if granted.done():  # cancelled while queued
                self._tidy(key)
                continue
            granted.set_result(None)
            self._running[key] = self._running.get(key, 0) + 1
            self._total += 1
            self._turn += 1
            self._served[key] = self._turn
