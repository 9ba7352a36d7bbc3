"""The registry's in-memory records: providers and live nodes, and their
proto form. A node's proto (without its load) is cached and rebuilt only when
the node changes, so snapshots and deltas cost a copy, not a rebuild."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.registry.reputation import Reputation
from idlegrid.registry.v1 import registry_pb2 as pb


def ts(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


@dataclass(slots=True, eq=False)
class Provider:
    id: bytes
    name: str
    ledger_account_id: bytes
    token_digest: bytes | None  # None: revoked by an operator (until rotated)
    created_at: float
    trusted: bool = False         # an operator trusts it: its nodes run spot checks
    suspended: bool = False       # every node of it is SUSPENDED
    suspended_reason: str = ""
    under_review: bool = False    # a node of it failed a spot check

    def to_proto(self) -> pb.Provider:
        return pb.Provider(provider_id=self.id, name=self.name, ledger_account_id=self.ledger_account_id,
                           created_at=ts(self.created_at), trusted=self.trusted, suspended=self.suspended,
                           suspended_reason=self.suspended_reason, under_review=self.under_review)


@dataclass(slots=True)
class Verification:
    """What the registry saw of one model: passed every check, canary latency."""

    verified: bool = False
    canary_latency_us: int = 0


@dataclass(frozen=True, slots=True)
class Link:
    """Where a linked node's link is held (soft state: not written; after a
    registry restart the agents register and link again)."""

    relay_id: str
    relay_addr: str
    link_id: bytes
    attached_at: float

    def to_proto(self) -> pb.NodeLink:
        return pb.NodeLink(relay_id=self.relay_id, relay_addr=self.relay_addr, link_id=self.link_id,
                           attached_at=ts(self.attached_at))


@dataclass(slots=True, eq=False)
class LiveNode:
    id: bytes
    provider: Provider
    token_digest: bytes | None
    endpoint: str
    hardware: pb.Hardware
    region: str
    labels: dict[str, str]
    offers: list[pb.ModelOffer]
    agent_version: str
    registered_at: float
    state: int
    reason: int
    detail: str = ""
    revision: int = 0
    state_changed_at: float = 0.0
    heartbeat_interval_ms: int = 0
    verification: dict[tuple[str, str], Verification] = field(default_factory=dict)
    # Soft state, updated by heartbeats without touching the cache.
    load: pb.NodeLoad | None = None
    load_at: float = 0.0
    lease_deadline: float = 0.0          # loop.time() after which the lease has run out
    generation: int = 0                  # bumped by each registration; stale verifications check it
    link: Link | None = None             # a linked node's relay link, while it holds one
    endpoint_host: str = ""              # a direct node's host as it registered it (bans match it)
    tokenizers: dict[str, str] = field(default_factory=dict)  # model name → the catalog's tokenizer
    reputation: Reputation = field(default_factory=Reputation)
    _proto: pb.Node | None = None

    def changed(self) -> None:
        self._proto = None

    def base_proto(self) -> pb.Node:
        """The node without its load (cached)."""
        if self._proto is None:
            models = []
            for o in self.offers:
                v = self.verification.get((o.name, o.version)) or Verification()
                models.append(pb.Model(offer=o, verified=v.verified, canary_latency_us=v.canary_latency_us,
                                       tokenizer=self.tokenizers.get(o.name, "")))
            self._proto = pb.Node(
                node_id=self.id, provider_id=self.provider.id,
                provider_account_id=self.provider.ledger_account_id, endpoint=self.endpoint,
                hardware=self.hardware, region=self.region, labels=self.labels, models=models,
                state=self.state, state_reason=self.reason, state_detail=self.detail,
                revision=self.revision, heartbeat_interval_ms=self.heartbeat_interval_ms,
                registered_at=ts(self.registered_at), state_changed_at=ts(self.state_changed_at),
                agent_version=self.agent_version,
                link=self.link.to_proto() if self.link is not None else None,
                reputation=self.reputation.to_proto(under_review=self.provider.under_review),
                trusted=self.provider.trusted,
            )
        return self._proto

    def load_proto(self) -> pb.NodeLoad | None:
        if self.load is None:
            return None
        out = pb.NodeLoad()
        out.CopyFrom(self.load)
        out.node_id = self.id
        out.reported_at.FromNanoseconds(int(self.load_at * 1e9))
        return out

    def to_proto(self) -> pb.Node:
        """The node with its last reported load (a fresh message)."""
        out = pb.Node()
        out.CopyFrom(self.base_proto())
        load = self.load_proto()
        if load is not None:
            out.load.CopyFrom(load)
        return out

    @property
    def linked(self) -> bool:
        """Reached through a relay link (no direct endpoint)."""
        return not self.endpoint

    def serves(self, model: str) -> bool:
        return any(o.name == model for o in self.offers)
