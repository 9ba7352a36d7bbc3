"""The partner's say over where a job runs: OpenRouter's ``provider`` object
(ProviderPreferences in scheduler.proto) and the older Constraints, read as
plain values routing can apply. Pure code.

    ceiling     = per unit (prompt, completion, request), the lower of
                  Constraints.max_price_* (0 = none) and provider.max_price
                  (unset = none; 0 = free only)
    admitted    = price within the ceiling, not named in ``ignore``, and
                  named in ``only`` when ``only`` is given
    an id names a node by its node id, or every node of a provider by its
    provider id
"""

from __future__ import annotations

from dataclasses import dataclass

from idlegrid.common.errors import InvalidArgument
from idlegrid.common.node_view import NodeInfo
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

IDS_MAX = 64  # in each of order, only and ignore (scheduler.proto)
ID_BYTES = 16
_SORTS = frozenset(spb.ProviderSort.values())


@dataclass(frozen=True, slots=True)
class Ceiling:
    """The most a node may charge per unit; None = no ceiling."""

    prompt: int | None = None  # micro-credits per million prompt tokens
    completion: int | None = None  # micro-credits per million completion tokens
    request: int | None = None  # micro-credits per request

    def admits(self, price: rpb.Price) -> bool:
        return all(cap is None or have <= cap for cap, have in (
            (self.prompt, price.per_million_input_tokens), (self.completion, price.per_million_output_tokens),
            (self.request, price.per_request)))

    @property
    def bounded(self) -> bool:
        return (self.prompt, self.completion, self.request) != (None, None, None)


def _lower(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def ceiling(req: spb.InferRequest) -> Ceiling:
    c, m = req.constraints, req.provider.max_price
    return Ceiling(
        prompt=_lower(c.max_price_per_million_input_tokens or None, m.prompt if m.HasField("prompt") else None),
        completion=_lower(c.max_price_per_million_output_tokens or None,
                          m.completion if m.HasField("completion") else None),
        request=_lower(c.max_price_per_request or None, m.request if m.HasField("request") else None))


def named(info: NodeInfo, ids) -> bool:
    """Whether ``ids`` name this node, or its provider."""
    return info.node_id in ids or info.node.provider_id in ids


def allow_fallbacks(p: spb.ProviderPreferences) -> bool:
    return p.allow_fallbacks if p.HasField("allow_fallbacks") else True


def check(p: spb.ProviderPreferences) -> None:
    """The limits of scheduler.proto."""
    if p.sort not in _SORTS:
        raise InvalidArgument("provider.sort is not a known sort")
    for name in ("order", "only", "ignore"):
        ids = getattr(p, name)
        if len(ids) > IDS_MAX:
            raise InvalidArgument(f"provider.{name} takes at most {IDS_MAX} ids")
        if any(len(i) != ID_BYTES for i in ids):
            raise InvalidArgument(f"provider.{name}: each id is {ID_BYTES} bytes (a node or provider id)")
