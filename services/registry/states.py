"""The node lifecycle as an explicit state machine.

    JOINING ──▶ VERIFYING ──▶ READY ──▶ DRAINING
       │            ▲  │         ▲ │         │
       │  (link)    │  │  resume │ ▼ pause   │
       │            │  │       PAUSED ──▶ DRAINING
       └────────────┼──┴─────────┴─┴─────────┴──▶ OFFLINE
                    └──(a new link: verify again)─┘
    any state but SUSPENDED ──(registration)──▶ JOINING
    any state ──(operator, failed spot check)──▶ SUSPENDED ──(operator)──▶ VERIFYING

Only READY is routable. SUSPENDED (an operator's decision, or a failed spot
check) leaves only by an operator's unsuspension: heartbeats, links, pauses,
leases, drains and registrations leave it SUSPENDED. A linked node (no direct endpoint) is verified only
once its link attached (JOINING waits for it); a node whose link drops goes
OFFLINE (LINK_LOST), and a new link takes it through VERIFYING again. PAUSED:
its owner needs the GPU; no new work, running jobs finish; PAUSED → PAUSED
only updates the detail. Every change goes through :func:`check`; a change
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
PAUSED = pb.NODE_STATE_PAUSED
SUSPENDED = pb.NODE_STATE_SUSPENDED

ALLOWED: dict[int, frozenset[int]] = {
    JOINING: frozenset({VERIFYING, OFFLINE, JOINING, SUSPENDED}),
    VERIFYING: frozenset({READY, OFFLINE, JOINING, SUSPENDED}),
    READY: frozenset({DRAINING, OFFLINE, JOINING, PAUSED, SUSPENDED}),
    PAUSED: frozenset({READY, DRAINING, OFFLINE, JOINING, PAUSED, SUSPENDED}),
    DRAINING: frozenset({OFFLINE, JOINING, SUSPENDED}),
    # OFFLINE → OFFLINE: only the reason changes (a lease-expired node deregistered).
    # OFFLINE → VERIFYING: a node whose link was lost holds a new one.
    OFFLINE: frozenset({JOINING, OFFLINE, VERIFYING, SUSPENDED}),
    # Only an operator lifts a suspension (→ VERIFYING); SUSPENDED → SUSPENDED
    # updates the detail.
    SUSPENDED: frozenset({VERIFYING, SUSPENDED}),
}

# The reasons that may lead into each state.
REASONS: dict[int, frozenset[int]] = {
    JOINING: frozenset({pb.STATE_REASON_REGISTERED}),
    VERIFYING: frozenset({pb.STATE_REASON_VERIFICATION_STARTED, pb.STATE_REASON_UNSUSPENDED}),
    READY: frozenset({pb.STATE_REASON_VERIFIED, pb.STATE_REASON_VERIFICATION_SKIPPED, pb.STATE_REASON_RESUMED}),
    PAUSED: frozenset({pb.STATE_REASON_PAUSED}),
    SUSPENDED: frozenset({pb.STATE_REASON_SUSPENDED, pb.STATE_REASON_CHECK_FAILED}),
    DRAINING: frozenset({pb.STATE_REASON_DRAIN_REQUESTED}),
    OFFLINE: frozenset({pb.STATE_REASON_VERIFICATION_FAILED, pb.STATE_REASON_LEASE_EXPIRED,
                        pb.STATE_REASON_DEREGISTERED, pb.STATE_REASON_REGISTRY_RESTARTED,
                        pb.STATE_REASON_LINK_LOST}),
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
