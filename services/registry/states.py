"""The node lifecycle as an explicit state machine.

    JOINING ──▶ VERIFYING ──▶ READY ──▶ DRAINING
       └───────────┴──────────┴───────────┴──▶ OFFLINE
    any state ──(registration)──▶ JOINING

Only READY is routable. Every change goes through :func:`check`; a change
the table does not allow is a bug and raises.
"""

from __future__ import annotations

from idlegrid.common.node_states import REASON_NAMES, STATE_NAMES
from idlegrid.registry.v1 import registry_pb2 as pb

JOINING = pb.NODE_STATE_JOINING
VERIFYING = pb.NODE_STATE_VERIFYING
READY = pb.NODE_STATE_READY
DRAINING = pb.NODE_STATE_DRAINING
OFFLINE = pb.NODE_STATE_OFFLINE

ALLOWED: dict[int, frozenset[int]] = {
    JOINING: frozenset({VERIFYING, OFFLINE, JOINING}),
    VERIFYING: frozenset({READY, OFFLINE, JOINING}),
    READY: frozenset({DRAINING, OFFLINE, JOINING}),
    DRAINING: frozenset({OFFLINE, JOINING}),
    # OFFLINE → OFFLINE: only the reason changes (a lease-expired node deregistered).
    OFFLINE: frozenset({JOINING, OFFLINE}),
}

# The reasons that may lead into each state.
REASONS: dict[int, frozenset[int]] = {
    JOINING: frozenset({pb.STATE_REASON_REGISTERED}),
    VERIFYING: frozenset({pb.STATE_REASON_VERIFICATION_STARTED}),
    READY: frozenset({pb.STATE_REASON_VERIFIED, pb.STATE_REASON_VERIFICATION_SKIPPED}),
    DRAINING: frozenset({pb.STATE_REASON_DRAIN_REQUESTED}),
    OFFLINE: frozenset({pb.STATE_REASON_VERIFICATION_FAILED, pb.STATE_REASON_LEASE_EXPIRED,
                        pb.STATE_REASON_DEREGISTERED, pb.STATE_REASON_REGISTRY_RESTARTED}),
}

# Names in the registry's tables and messages: spelled once, from the proto's
# enums, for every service (idlegrid.common.node_states).
NAMES = STATE_NAMES
BY_NAME = {v: k for k, v in NAMES.items()}
REASON_BY_NAME = {v: k for k, v in REASON_NAMES.items()}
# Every state the proto defines has its row in both tables.
assert ALLOWED.keys() == REASONS.keys() == NAMES.keys(), "a NodeState without a row in the state machine"


class IllegalTransition(AssertionError):
    """A state change the machine does not allow: a bug, never user input."""


def check(src: int, dst: int, reason: int) -> None:
    if dst not in ALLOWED[src]:
        raise IllegalTransition(f"node state {NAMES[src]} → {NAMES[dst]} is not allowed")
    if reason not in REASONS[dst]:
        raise IllegalTransition(f"reason {REASON_NAMES.get(reason, reason)} cannot lead to {NAMES[dst]}")
