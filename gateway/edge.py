"""Cheap refusals at the edge, in memory, before any database work:

- **per client IP, before authentication**: a token bucket per IP
  (IDLEGRID_GATEWAY_IP_RATE_PER_S sustained, IDLEGRID_GATEWAY_IP_BURST at
  once) in each replica, over a bounded LRU of IPs
  (IDLEGRID_GATEWAY_IP_TRACKED_MAX; the least recently seen is forgotten
  first, which only forgives it). Over it: 429 ``ip_rate_limit_exceeded``.
  The client IP is the connection's peer; X-Forwarded-For is believed only
  when the peer is one of IDLEGRID_GATEWAY_TRUSTED_PROXIES, and then the
  client is the right-most address in it that is not a trusted proxy (the
  left-most ones are whatever the client chose to send). Probes
  (/healthz, /readyz, /metrics) are not counted.
- **per API key, after authentication**: at most
  IDLEGRID_GATEWAY_KEY_CONCURRENCY_MAX requests of one key in flight in a
  replica (a stream counts until its last byte), so one key never holds all
  of a replica's IDLEGRID_GATEWAY_CONCURRENCY_MAX slots. Over it: 429
  ``key_concurrency_exceeded``.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import Scope

from idlegrid.gateway.errors import ApiError
from idlegrid.gateway.metrics import Metrics
from idlegrid.gateway.middleware import on_finish
from idlegrid.gateway.settings import Network

UNCOUNTED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
XFF_CHARS_MAX = 4096
_SLOT_KEY = "idlegrid.key_slot"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_ip(scope: Scope, trusted: tuple[Network, ...]) -> str:
    """The address a request is counted under (see the module docstring)."""
    peer_text = (scope.get("client") or ("unknown", 0))[0]
    if not trusted:  # nobody's X-Forwarded-For is believed: no need to parse the peer
        return peer_text
    peer = _ip(peer_text)
    if peer is None or not any(peer in net for net in trusted):
        return peer_text
    forwarded = b",".join(v for k, v in scope["headers"] if k == b"x-forwarded-for")
    if not forwarded or len(forwarded) > XFF_CHARS_MAX:
        return peer_text
    hops = [_ip(h) for h in forwarded.decode("latin-1").split(",")]
    for hop in reversed(hops):
        if hop is None:  # a malformed hop: nothing to its left can be believed
            return peer_text
        if not any(hop in net for net in trusted):
            return str(hop)
    return str(hops[0]) if hops else peer_text


class IpLimiter:
    """A token bucket per IP over a bounded LRU of IPs."""

    def __init__(self, *, rate_per_s: int, burst: int, tracked_max: int) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._max = tracked_max
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # ip -> (tokens, at)

    def take(self, ip: str) -> float:
        """0 when the request may go on, else the seconds until it could."""
        if self._rate == 0:
            return 0.0
        now = time.monotonic()
        tokens, at = self._buckets.pop(ip, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - at) * self._rate)
        wait_s = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait_s = (1 - tokens) / self._rate
        self._buckets[ip] = (tokens, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait_s

    def __len__(self) -> int:
        return len(self._buckets)


class IpGate:
    """Counts every request but the probes against its client IP; the
    gateway's middleware (idlegrid.gateway.middleware) asks it first."""

    def __init__(self, *, limiter: IpLimiter, trusted: tuple[Network, ...], metrics: Metrics) -> None:
        self.limiter = limiter
        self.trusted = trusted
        self.metrics = metrics

    def refusal(self, scope: Scope) -> ApiError | None:
        """The 429 to answer, or None when the request may go on."""
        if scope["path"] in UNCOUNTED_PATHS:
            return None
        wait_s = self.limiter.take(client_ip(scope, self.trusted))
        if wait_s <= 0:
            return None
        self.metrics.refusals.labels("ip_rate").inc()
        return ApiError(429, f"too many requests from this address; retry in {wait_s:.3f} s",
                        code="ip_rate_limit_exceeded", headers={"Retry-After": str(max(1, math.ceil(wait_s))),
                                                                "retry-after-ms": str(math.ceil(wait_s * 1000))})


class KeySlots:
    """Requests in flight per API key in this replica, each at most ``cap``."""

    def __init__(self, *, cap: int, metrics: Metrics | None = None) -> None:
        self._cap = cap
        self._in_flight: dict[str, int] = {}
        self._metrics = metrics

    def count(self, key_id: str) -> int:
        return self._in_flight.get(key_id, 0)

    def take(self, scope: Scope, key_id: str) -> None:
        """Holds one of the key's slots until the request ends (its response
        sent, streams included); 429 when the key holds them all."""
        if scope.get(_SLOT_KEY) == key_id:
            return
        n = self._in_flight.get(key_id, 0)
        if n >= self._cap:
            if self._metrics is not None:
                self._metrics.refusals.labels("key_concurrency").inc()
            raise ApiError(429, f"this key already has {n} requests in flight, its limit; wait for one to finish",
                           code="key_concurrency_exceeded", headers={"Retry-After": "1"})
        self._in_flight[key_id] = n + 1
        scope[_SLOT_KEY] = key_id
        on_finish(scope, self._releaser(key_id))

    def _releaser(self, key_id: str) -> Callable[[], None]:
        def release() -> None:
            left = self._in_flight[key_id] - 1
            assert left >= 0, key_id
            if left:
                self._in_flight[key_id] = left
            else:
                del self._in_flight[key_id]
        return release
