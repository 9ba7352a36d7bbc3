"""The agent's options, and the small values it keeps: its status as the
registry last told it, and why a heartbeat stream ended."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from idlegrid.common.config import Config
from idlegrid.common.errors import FailedPrecondition
from idlegrid.node.config_file import NodeConfig
from idlegrid.registry.v1 import registry_pb2 as pb

AGENT_VERSION = "idlegrid-agent/0.1.0"
# OFFLINE for these reasons: register again on our own.
REJOIN_REASONS = frozenset({pb.STATE_REASON_LEASE_EXPIRED, pb.STATE_REASON_REGISTRY_RESTARTED})


class VerificationFailed(FailedPrecondition):
    """The registry checked the node's Triton and refused it; the message says why."""

    reason = "verification_failed"


class StreamEnd(enum.Enum):
    """Why a heartbeat stream ended, and so what the agent does next."""

    REJOIN = enum.auto()  # register again: OFFLINE for a reason to rejoin after, or the token was refused
    RETRY = enum.auto()   # the stream broke: open another after a pause
    STOP = enum.auto()    # the agent is leaving


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentOptions:
    registry_addr: str
    provider_token: str
    triton_url: str
    node_config: NodeConfig
    metrics_url: str | None = None       # Triton's Prometheus endpoint, for queue depth
    node_id: bytes | None = None         # re-register this node (a restarted agent)
    channel_config: Config | None = None  # TLS settings for the registry channel
    rpc_timeout_s: float = 10.0
    discovery_timeout_s: float = 10.0
    drain_quiet_s: float = 2.0           # no work seen for this long: drained
    drain_poll_s: float = 0.25
    drain_timeout_s: float = 60.0        # deregister anyway after this
    backoff_max_s: float = 10.0          # reconnects and re-registrations
    join_wait_s: float = 300.0           # the first registration retries while the registry is unreachable
    agent_version: str = AGENT_VERSION
    # Linked mode: relay replicas ("host:port"), tried in turn; empty: the
    # node registers its Triton's address as a direct endpoint (only where
    # the operator enabled direct endpoints).
    relay_addrs: tuple[str, ...] = ()
    triton_pids: frozenset[int] = frozenset()   # Triton's processes, when the agent knows them (the demo)


@dataclass(slots=True)
class Status:
    state: int = pb.NODE_STATE_UNSPECIFIED
    reason: int = pb.STATE_REASON_UNSPECIFIED
    detail: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)


