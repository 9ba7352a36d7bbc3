"""How the registry's node states and state reasons are spelled outside the
wire: in the registry's tables, the REST API and the CLI ("ready",
"lease_expired").

The registry proto's enums (``NodeState``, ``StateReason``) are the one
definition; the spelling is the enum value's name without its prefix, in
lower case (``NODE_STATE_READY`` → ``"ready"``), so a state added to the
proto gets its name here with no second table to keep in step.
"""

from __future__ import annotations

from types import MappingProxyType

from idlegrid.registry.v1 import registry_pb2 as rpb


def state_name(state: int) -> str:
    """``"ready"`` for ``NODE_STATE_READY``; ValueError for a value the enum lacks."""
    return rpb.NodeState.Name(state).removeprefix("NODE_STATE_").lower()


def reason_name(reason: int) -> str:
    """``"lease_expired"`` for ``STATE_REASON_LEASE_EXPIRED``; ValueError for a value the enum lacks."""
    return rpb.StateReason.Name(reason).removeprefix("STATE_REASON_").lower()


# Every state and reason a node can be in or give, by value (UNSPECIFIED is neither).
STATE_NAMES = MappingProxyType({v: state_name(v) for v in rpb.NodeState.values()
                                if v != rpb.NODE_STATE_UNSPECIFIED})
REASON_NAMES = MappingProxyType({v: reason_name(v) for v in rpb.StateReason.values()
                                 if v != rpb.STATE_REASON_UNSPECIFIED})
