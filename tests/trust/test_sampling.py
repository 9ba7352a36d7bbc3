"""Which jobs are spot-checked: the node's rate, the operator's budget, the
reserve kept for new nodes, and a bounded queue that never makes a job wait.
Pure code and the spot checker's offer path (no node is called)."""

from __future__ import annotations

import asyncio
import random

import pytest

from idlegrid.common.errors import ConfigError
from idlegrid.common.node_view import NodeInfo, NodeTable
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler import checks_sampling as cs
from idlegrid.scheduler.checks_run import Sample
from idlegrid.scheduler.checks_sampling import Decision, Sampler, SpotCheckSettings, Unit
from idlegrid.scheduler.spot_checks import SpotChecker
from idlegrid.scheduler.triton import TritonPool

LLM = "smollm2-135m-instruct"


def info(*, completed: int = 0, sample_rate: float | None = None, trusted: bool = False, node: bytes = b"n",
         provider: bytes = b"p") -> NodeInfo:
    n = rpb.Node(node_id=node.ljust(16, b"\0"), provider_id=provider.ljust(16, b"\0"), state=rpb.NODE_STATE_READY,
                 trusted=trusted, models=[rpb.Model(offer=rpb.ModelOffer(name=LLM), verified=True)])
    if sample_rate is not None:
        n.reputation.CopyFrom(rpb.Reputation(sample_rate=sample_rate))
    i = NodeInfo(node=n, models={LLM: n.models[0]})
    i.completed = completed
    return i


def sample(*, tokens: int = 100, temperature: float = 0.7, node: bytes = b"n") -> Sample:
    return Sample(job_id=random.randbytes(16), node_id=node.ljust(16, b"\0"), provider_id=b"p".ljust(16, b"\0"),
                  model=LLM, llm=True, cost=tokens, params={"temperature": temperature, "max_tokens": tokens},
                  prompt_tokens=tokens // 2, completion_tokens=tokens - tokens // 2, max_tokens=tokens)


def test_the_registrys_rate_is_used_once_filled_else_new_nodes_are_sampled_harder():
    assert cs.rate_for(info(completed=0)) == cs.NEW_NODE_RATE
    assert cs.rate_for(info(completed=cs.NEW_NODE_JOBS - 1)) == cs.NEW_NODE_RATE
    assert cs.rate_for(info(completed=cs.NEW_NODE_JOBS)) == cs.ESTABLISHED_RATE
    assert cs.rate_for(info(completed=10_000, sample_rate=0.5)) == 0.5
    assert cs.rate_for(info(completed=0, sample_rate=0.02)) == 0.02


@pytest.mark.parametrize("rate", [0.02, 0.2, 0.5])
def test_jobs_are_drawn_at_the_nodes_rate_when_the_budget_has_room(rate):
    sampler = Sampler(1.0, rng=random.Random(7))
    n, drawn = 20_000, 0
    for _ in range(n):
        sampler.served(Unit.TOKENS, 100)
        drawn += sampler.decide(rate, Unit.TOKENS, 100) is Decision.SAMPLED
    # Binomial: 5 standard deviations either side (the seed makes it exact anyway).
    sd = (n * rate * (1 - rate)) ** 0.5
    assert abs(drawn - n * rate) < 5 * sd


def test_checks_never_spend_more_than_the_budget_of_the_compute_served():
    rng = random.Random(3)
    sampler = Sampler(0.05, rng=rng)
    for _ in range(20_000):
        cost = rng.randint(10, 2_000)
        sampler.served(Unit.TOKENS, cost)
        if sampler.decide(1.0, Unit.TOKENS, cost) is Decision.SAMPLED:
            sampler.settle(Unit.TOKENS, cost, cost)
        pool = sampler.pools[Unit.TOKENS]
        assert pool.spent <= 0.05 * pool.served
    assert 0.045 < sampler.spent_share(Unit.TOKENS) <= 0.05  # the budget is used, not wasted


class AlwaysDraws(random.Random):
    def random(self) -> float:
        return 0.0


def test_established_nodes_leave_a_reserve_of_the_budget_to_nodes_sampled_harder():
    sampler = Sampler(0.05, rng=AlwaysDraws())
    sampler.served(Unit.TOKENS, 10_000)  # the budget: 500 tokens, of which established nodes may use 80 %
    established = [sampler.decide(cs.ESTABLISHED_RATE, Unit.TOKENS, 100) for _ in range(5)]
    assert established == [Decision.SAMPLED] * 4 + [Decision.OVER_BUDGET]
    assert sampler.decide(cs.NEW_NODE_RATE, Unit.TOKENS, 100) is Decision.SAMPLED  # the reserve
    assert sampler.decide(cs.NEW_NODE_RATE, Unit.TOKENS, 1) is Decision.OVER_BUDGET
    assert sampler.pools[Unit.TOKENS].spent == 500


def test_a_check_that_did_not_run_gives_its_budget_back_and_one_that_ran_counts_its_real_cost():
    sampler = Sampler(1.0, rng=random.Random(0))
    sampler.served(Unit.TOKENS, 1_000)
    assert sampler.decide(1.0, Unit.TOKENS, 300) is Decision.SAMPLED
    sampler.give_back(Unit.TOKENS, 300)
    assert sampler.pools[Unit.TOKENS].spent == 0
    assert sampler.decide(1.0, Unit.TOKENS, 300) is Decision.SAMPLED
    sampler.settle(Unit.TOKENS, 300, 280)
    assert sampler.pools[Unit.TOKENS].spent == 280


def test_the_budget_and_a_rate_floor_come_from_the_environment():
    s = SpotCheckSettings.from_env({"IDLEGRID_SPOT_CHECK_BUDGET": "0.1", "IDLEGRID_SPOT_CHECK_RATE_MIN": "1"})
    assert (s.budget_share, s.rate_min) == (0.1, 1.0)
    assert SpotCheckSettings.from_env({}).budget_share == cs.BUDGET_SHARE_DEFAULT
    for bad in ("-0.1", "1.5", "lots"):
        with pytest.raises(ConfigError, match="IDLEGRID_SPOT_CHECK_BUDGET"):
            SpotCheckSettings.from_env({"IDLEGRID_SPOT_CHECK_BUDGET": bad})


def checker(settings: SpotCheckSettings, *, seed: int = 0) -> SpotChecker:
    return SpotChecker(NodeTable(), TritonPool(), registry=None, metering=None, settings=settings,
                       sampler=Sampler(settings.budget_share, rng=random.Random(seed)))


async def test_offering_a_job_never_waits_and_a_full_queue_drops_and_counts():
    c = checker(SpotCheckSettings(budget_share=1.0, rate_min=1.0, queue_max=3))
    node = info()
    for _ in range(5):
        c.offer(sample(), node)  # synchronous: nothing to await on the response path
    assert (c.counters.sampled, c.counters.queue_drops, c.pending) == (3, 2, 3)
    assert c.sampler.pools[Unit.TOKENS].spent == 300  # the dropped ones gave their share back


async def test_sampled_outputs_too_short_to_judge_are_not_queued_but_greedy_ones_are():
    c = checker(SpotCheckSettings(budget_share=1.0, rate_min=1.0))
    c.offer(sample(tokens=6, temperature=0.7), info())
    c.offer(sample(tokens=6, temperature=0.0), info())
    assert (c.counters.too_short, c.counters.sampled) == (1, 1)


async def test_a_zero_budget_checks_nothing():
    c = checker(SpotCheckSettings(budget_share=0.0, rate_min=1.0))
    for _ in range(10):
        c.offer(sample(), info())
    assert (c.counters.offered, c.counters.sampled, c.pending) == (10, 0, 0)


def test_the_checker_is_a_ready_trusted_node_never_the_checked_one_preferably_of_another_provider():
    table = NodeTable()
    c = SpotChecker(table, TritonPool(), registry=None, settings=SpotCheckSettings())
    checked = info(node=b"checked", provider=b"p", trusted=True)
    sibling = info(node=b"sibling", provider=b"p", trusted=True)
    untrusted = info(node=b"untrusted", provider=b"q")
    for i in (checked, sibling, untrusted):
        table.upsert(i.node)
    s = sample(node=b"checked")
    assert c.checker_for(s).node_id == sibling.node_id
    other = info(node=b"other", provider=b"q", trusted=True)
    table.upsert(other.node)
    assert c.checker_for(s).node_id == other.node_id
    paused = other.node
    paused.state = rpb.NODE_STATE_PAUSED
    table.upsert(paused)
    assert c.checker_for(s).node_id == sibling.node_id
    table.remove(sibling.node_id)
    assert c.checker_for(s) is None  # only the checked node itself is left: no check


async def test_stop_ends_the_workers():
    c = checker(SpotCheckSettings())
    c.start()
    await c.stop()
    assert not c._workers
    await asyncio.sleep(0)
