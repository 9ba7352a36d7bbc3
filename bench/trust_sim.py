"""The simulation behind ``idlegrid bench trust``: a marketplace of honest
established nodes and one new node that cheats on a share of its jobs, job
after job, through the scheduler's real sampler and budget
(checks_sampling.Sampler), the registry's real sampling rates
(registry reputation.Reputation) and verdicts that were really reached: each
checked job takes the verdict and the cost of an item of a corpus that a
demo Triton generated and a trusted demo Triton checked (bench/trust.py).

Each round, every node serves one job (an item drawn from the corpus: an
honest one, or for the target node on a cheated job a cheating one). A job is
offered to the sampler as the spot checker offers it; a sampled job is
checked at once (its item's verdict), and the verdict feeds the node's
reputation as ReportCheck does. A trial ends when the target node fails a
check (detected after the number of jobs it served) or after ``jobs_max``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from idlegrid.registry.reputation import Reputation
from idlegrid.scheduler.checks_run import Sample
from idlegrid.scheduler.checks_sampling import Decision, Sampler, Unit
from idlegrid.scheduler.spot_checks import judgeable

ESTABLISHED_CHECKS = 1_000  # passed checks of an established honest node


@dataclass(frozen=True, slots=True)
class Item:
    """One real job and its real check."""

    sample: Sample
    honest: bool  # served by the honest node (else by the cheating one)
    passed: bool  # the verdict
    check_cost: int  # tokens the check processed
    serve_s: float  # wall time to serve the job
    check_s: float  # wall time of the check


@dataclass(slots=True)
class Totals:
    served_tokens: int = 0
    checked_tokens: int = 0
    served_s: float = 0.0
    checked_s: float = 0.0
    honest_checks: int = 0
    honest_false_positives: int = 0


@dataclass(slots=True)
class _Node:
    reputation: Reputation
    jobs: int = 0
    target: bool = False


@dataclass(slots=True)
class Simulation:
    honest: list[Item]
    cheats: list[Item]
    budget_share: float
    honest_nodes: int
    jobs_max: int
    totals: Totals = field(default_factory=Totals)

    def trial(self, cheat_rate: float, rng: random.Random) -> int | None:
        """Jobs the target served until detected; None if it never was."""
        sampler = Sampler(self.budget_share, rng=rng)
        nodes = [_Node(Reputation(checks_passed=ESTABLISHED_CHECKS)) for _ in range(self.honest_nodes)]
        target = _Node(Reputation(), target=True)
        nodes.append(target)
        while target.jobs < self.jobs_max:
            for node in nodes:
                node.jobs += 1
                cheated = node.target and rng.random() < cheat_rate
                item = rng.choice(self.cheats if cheated else self.honest)
                if self._serve(sampler, node, item, rng) is False and node.target:
                    return target.jobs
        return None

    def _serve(self, sampler: Sampler, node: _Node, item: Item, rng: random.Random) -> bool | None:
        """The job's verdict when it was checked, else None."""
        t = self.totals
        cost = item.sample.cost
        sampler.served(Unit.TOKENS, cost)
        t.served_tokens += cost
        t.served_s += item.serve_s
        if sampler.decide(node.reputation.sample_rate(under_review=False), Unit.TOKENS, cost) is not Decision.SAMPLED:
            return None
        if not judgeable(item.sample):
            sampler.give_back(Unit.TOKENS, cost)
            return None
        sampler.settle(Unit.TOKENS, cost, item.check_cost)
        t.checked_tokens += item.check_cost
        t.checked_s += item.check_s
        if item.honest:
            t.honest_checks += 1
            t.honest_false_positives += not item.passed
        node.reputation.checks_passed += item.passed
        node.reputation.checks_failed += not item.passed
        return item.passed


def p99(detections: list[int | None], jobs_max: int) -> int:
    """The 99th percentile of jobs until detection; a trial never detected
    counts as jobs_max + 1 (so a p99 above jobs_max means "not within")."""
    values = sorted(jobs_max + 1 if d is None else d for d in detections)
    return values[min(len(values) - 1, int(0.99 * len(values)))]
