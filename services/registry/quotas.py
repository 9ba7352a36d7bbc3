"""Per-provider registration quotas, checked before a registration changes
anything (RESOURCE_EXHAUSTED names the quota and its setting):

- ``provider_nodes_max``: nodes of one provider that are not OFFLINE, plus
  its new nodes whose registration is in progress; registering a live node
  again does not add one;
- ``provider_registrations_per_minute_max``: registrations (new nodes and
  registering again) of one provider in any sliding minute. A registration
  refused by a check before this one does not count.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from idlegrid.common.errors import ResourceExhausted
from idlegrid.registry.live import LiveView
from idlegrid.registry.records import LiveNode, Provider
from idlegrid.registry.settings import RegistrySettings

WINDOW_S = 60.0


class ProviderQuotas:
    def __init__(self, settings: RegistrySettings, view: LiveView,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._nodes_max = settings.provider_nodes_max
        self._per_minute_max = settings.provider_registrations_per_minute_max
        self._view = view
        self._clock = clock
        self._recent: dict[bytes, deque[float]] = {}  # provider id → registration times, oldest first
        self._joining: dict[bytes, int] = {}  # provider id → new nodes being registered

    def admit(self, provider: Provider, node: LiveNode | None) -> None:
        """Checks both quotas for a registration of ``provider`` (``node``:
        the node registered again, None for a new one) and counts it; a new
        node stays counted as joining until :meth:`done`. ResourceExhausted,
        counting nothing, when a quota is reached."""
        recent = self._recent.setdefault(provider.id, deque())
        cutoff = self._clock() - WINDOW_S
        while recent and recent[0] <= cutoff:
            recent.popleft()
        if len(recent) >= self._per_minute_max:
            raise ResourceExhausted(
                f"provider quota reached: at most {self._per_minute_max} registrations per minute"
                " (provider_registrations_per_minute_max); retry later")
        grows = node is None or node not in self._view.live
        if grows:
            live = sum(1 for n in self._view.live if n.provider is provider) + self._joining.get(provider.id, 0)
            if live >= self._nodes_max:
                raise ResourceExhausted(
                    f"provider quota reached: at most {self._nodes_max} live nodes per provider"
                    " (provider_nodes_max); deregister one first")
        recent.append(self._clock())
        if node is None:
            self._joining[provider.id] = self._joining.get(provider.id, 0) + 1

    def done(self, provider: Provider, node: LiveNode | None) -> None:
        """The registration :meth:`admit` counted is over (written or failed)."""
        if node is None:
            left = self._joining[provider.id] - 1
            if left:
                self._joining[provider.id] = left
            else:
                del self._joining[provider.id]
