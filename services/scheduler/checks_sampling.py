"""Which completed jobs are spot-checked, within the operator's compute budget.

Rate. Each completed job of a node is drawn with probability

    rate = the node's Reputation.sample_rate, set by the registry from its record
           (raised for a provider under review), when the registry has filled it;
         = NEW_NODE_RATE      while this scheduler has seen it complete fewer than NEW_NODE_JOBS jobs;
         = ESTABLISHED_RATE   after that.

Budget. Checks may spend at most ``budget_share`` of the compute served
(IDLEGRID_SPOT_CHECK_BUDGET, default 0.05), counted in tokens for language
models (a job serves prompt + completion tokens; a check processes prompt +
output tokens again, scored or regenerated) and in requests for tensor
models (a check re-runs one request). A token of prefill counts as much as
a generated one, which overstates what a check costs on a GPU (prefill is
batched) and is about right on a CPU (measured: SmolLM2 prefills ~70 and
decodes ~50 tokens/s on one core). A drawn job is admitted only if

    spent + cost <= budget_share * served                  (nodes sampled harder)
    spent + cost <= budget_share * served * (1 - RESERVE)  (nodes at ESTABLISHED_RATE or below)

so the established majority leaves RESERVE of the budget to new nodes and
nodes under review, the ones most worth checking. ``spent`` counts the
estimated cost at admission; a check that cannot run gives it back, and a
check that ran is counted at what it really cost. Hence, at every instant,
spent <= budget_share * served + one check's misestimate.

Pure code: randomness is injectable, nothing here waits or calls out.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

from idlegrid.common.errors import ConfigError
from idlegrid.common.node_view import NodeInfo

NEW_NODE_RATE = 0.2
NEW_NODE_JOBS = 50
ESTABLISHED_RATE = 0.05
BUDGET_SHARE_DEFAULT = 0.05
RESERVE = 0.2  # the budget's share kept for nodes sampled above ESTABLISHED_RATE
QUEUE_MAX_DEFAULT = 1_000
WORKERS_DEFAULT = 1
CHECK_TIMEOUT_S_DEFAULT = 120.0


class Unit(enum.Enum):
    TOKENS = "tokens"  # language models
    REQUESTS = "requests"  # tensor models


class Decision(enum.Enum):
    SAMPLED = "sampled"
    NOT_DRAWN = "not_drawn"
    OVER_BUDGET = "over_budget"


@dataclass(frozen=True, slots=True, kw_only=True)
class SpotCheckSettings:
    """| variable | default | meaning |
    |---|---|---|
    | IDLEGRID_SPOT_CHECK_BUDGET | 0.05 | the most spot checks may spend, as a share of the compute served (0 = no checks) |
    | IDLEGRID_SPOT_CHECK_RATE_MIN | 0 | a floor under every node's sampling rate (an operator's drill: 1 checks every job the budget allows) |
    """

    budget_share: float = BUDGET_SHARE_DEFAULT
    rate_min: float = 0.0
    queue_max: int = QUEUE_MAX_DEFAULT  # sampled jobs waiting for a checker; more are dropped (counted)
    workers: int = WORKERS_DEFAULT  # checks run at once
    check_timeout_s: float = CHECK_TIMEOUT_S_DEFAULT  # one check on the trusted node

    def __post_init__(self) -> None:
        for name in ("budget_share", "rate_min"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0 and math.isfinite(value)):
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.queue_max < 1 or self.workers < 1 or self.check_timeout_s <= 0:
            raise ValueError("queue_max and workers must be at least 1, check_timeout_s positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides) -> SpotCheckSettings:
        for name, field_name in (("IDLEGRID_SPOT_CHECK_BUDGET", "budget_share"),
                                 ("IDLEGRID_SPOT_CHECK_RATE_MIN", "rate_min")):
            raw = env.get(name, "")
            if raw:
                overrides.setdefault(field_name, _share(name, raw))
        return cls(**overrides)


def _share(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not (0.0 <= value <= 1.0):
        raise ConfigError(f"{name} must be in [0, 1], got {raw!r}")
    return value


def rate_for(info: NodeInfo) -> float:
    """The share of ``info``'s completed jobs to check now."""
    node = info.node
    if node.HasField("reputation") and node.reputation.sample_rate > 0:
        return min(1.0, node.reputation.sample_rate)
    return NEW_NODE_RATE if info.completed < NEW_NODE_JOBS else ESTABLISHED_RATE


@dataclass(slots=True)
class Pool:
    """Compute served and spent on checks, in one unit."""

    served: int = 0
    spent: int = 0

    def room(self, share: float, *, reserve: bool) -> float:
        return share * self.served * ((1.0 - RESERVE) if reserve else 1.0) - self.spent


class Sampler:
    """Draws jobs to check and keeps the budget (one per scheduler replica)."""

    def __init__(self, budget_share: float = BUDGET_SHARE_DEFAULT, *, rng: random.Random | None = None) -> None:
        if not 0.0 <= budget_share <= 1.0:
            raise ValueError(f"budget_share must be in [0, 1], got {budget_share}")
        self.budget_share = budget_share
        self._rng = rng or random.Random()
        self.pools = {unit: Pool() for unit in Unit}

    def served(self, unit: Unit, amount: int) -> None:
        """A completed job served ``amount`` (tokens or one request)."""
        assert amount >= 0
        self.pools[unit].served += amount

    def decide(self, rate: float, unit: Unit, cost: int) -> Decision:
        """Whether to check a job that cost ``cost`` to serve, drawn at ``rate``;
        SAMPLED reserves ``cost`` in the budget (see settle, give_back)."""
        if self._rng.random() >= rate:
            return Decision.NOT_DRAWN
        pool = self.pools[unit]
        if cost > pool.room(self.budget_share, reserve=rate <= ESTABLISHED_RATE):
            return Decision.OVER_BUDGET
        pool.spent += cost
        return Decision.SAMPLED

    def settle(self, unit: Unit, estimated: int, actual: int) -> None:
        """A check ran: count what it really cost instead of its estimate."""
        self.pools[unit].spent += actual - estimated

    def give_back(self, unit: Unit, estimated: int) -> None:
        """A sampled job was not checked after all (dropped, no checker, an error)."""
        self.pools[unit].spent -= estimated

    def spent_share(self, unit: Unit) -> float:
        pool = self.pools[unit]
        return pool.spent / pool.served if pool.served else 0.0
