"""Billing as a pure function: what a job is charged for what it delivered,
with no service, node or tokenizer running (the counter is a stand-in with
known counts)."""

from __future__ import annotations

import os

from idlegrid.common.clearing import micros_ceil
from idlegrid.common.node_view import NodeInfo
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler import billing, planning
from idlegrid.scheduler.counting import Counter
from idlegrid.scheduler.dispatch import Outcome
from idlegrid.scheduler.pricing import llm_cost
from idlegrid.scheduler.routing import Choice
from idlegrid.scheduler.v1 import scheduler_pb2 as spb
from tests.scheduler.support import chat, echo

PRICE = rpb.Price(per_million_input_tokens=300_000, per_million_output_tokens=900_000, per_request=70)
WORDS = Counter(prompt=lambda text: len(text.split()), text=lambda text: len(text.split()))


def _choice(kind=rpb.MODEL_KIND_LLM, *, context_length=2048, price: rpb.Price = PRICE) -> Choice:
    node = rpb.Node(node_id=os.urandom(16), provider_id=os.urandom(16), provider_account_id=os.urandom(16))
    model = rpb.Model(offer=rpb.ModelOffer(name="m", kind=kind, price=price, context_length=context_length),
                      verified=True)
    return Choice(NodeInfo(node=node, models={"m": model}), model, "test", 1)


def _job(req: spb.InferRequest, choice: Choice, counter=WORDS) -> planning.Job:
    return planning.prepare(req, (choice,), counter=counter, started_ns=0, t0_s=0.0)


def test_a_completed_chat_is_billed_by_the_platform_count_and_the_node_price():
    choice = _choice()
    job = _job(chat(os.urandom(16), "one two three", max_tokens=8), choice)
    out = Outcome(choice=choice, attempt=1, text=["four five", " six"], node_in=job.prompt_tokens, node_out=3,
                  delivered=True, complete=True)
    u = billing.bill(job, out, counter=WORDS)
    assert (u.prompt_tokens, u.completion_tokens) == (job.prompt_tokens, 3)
    assert u.tokens_verified and u.mismatch is None and u.outcome == mpb.OUTCOME_COMPLETED
    assert u.cost_micros == llm_cost(PRICE, job.prompt_tokens, 3)
    assert u.provider_account_id == choice.info.node.provider_account_id
    assert u.node_id == choice.info.node_id.hex()


def test_billing_is_pure_the_same_job_and_outcome_give_the_same_usage():
    choice = _choice()
    job = _job(chat(os.urandom(16), "a b c"), choice)
    out = Outcome(choice=choice, attempt=1, text=["x y"], node_in=job.prompt_tokens, node_out=2, delivered=True,
                  complete=True)
    assert billing.bill(job, out, counter=WORDS) == billing.bill(job, out, counter=WORDS)
    assert choice.info.mismatches == 0  # billing reports a mismatch; it does not touch the node


def test_a_broken_stream_bills_the_delivered_tokens_as_partial():
    choice = _choice()
    job = _job(chat(os.urandom(16), "tell a story", max_tokens=100), choice)
    out = Outcome(choice=choice, attempt=1, text=["once upon"], node_in=job.prompt_tokens, node_out=2,
                  delivered=True)
    u = billing.bill(job, out, counter=WORDS)
    assert u.outcome == mpb.OUTCOME_PARTIAL and u.completion_tokens == 2


def test_nothing_delivered_costs_nothing():
    choice = _choice()
    job = _job(chat(os.urandom(16)), choice)
    for out in (Outcome(), Outcome(choice=choice, attempt=3)):
        u = billing.bill(job, out, counter=WORDS)
        assert u == billing.Usage(outcome=mpb.OUTCOME_FAILED)
        assert billing.usage_pb(u) == spb.Usage()


def test_an_empty_completion_still_pays_for_its_prompt():
    choice = _choice()
    job = _job(chat(os.urandom(16), "a b c d"), choice)
    u = billing.bill(job, Outcome(choice=choice, attempt=1, complete=True), counter=WORDS)
    assert u.outcome == mpb.OUTCOME_COMPLETED and u.completion_tokens == 0
    assert u.cost_micros == llm_cost(PRICE, job.prompt_tokens, 0) > 0


def test_completion_is_capped_at_max_tokens_and_cost_at_the_hold():
    choice = _choice()
    job = _job(chat(os.urandom(16), "a", max_tokens=2), choice)
    out = Outcome(choice=choice, attempt=1, text=["w " * 50], node_in=job.prompt_tokens, node_out=2,
                  delivered=True, complete=True)
    u = billing.bill(job, out, counter=WORDS)
    assert u.completion_tokens == 2 and u.cost_micros <= job.hold_micros
    assert u.mismatch == (job.prompt_tokens, 50)  # the node said 2, the platform counts 50


def test_a_count_far_from_the_nodes_is_a_mismatch():
    choice = _choice()
    job = _job(chat(os.urandom(16), "a b", max_tokens=100), choice)
    out = Outcome(choice=choice, attempt=1, text=["x " * 40], node_in=job.prompt_tokens, node_out=10,
                  delivered=True, complete=True)
    assert billing.bill(job, out, counter=WORDS).mismatch == (job.prompt_tokens, 40)


def test_without_the_models_tokenizer_the_nodes_counts_are_billed_unverified():
    choice = _choice()
    job = _job(chat(os.urandom(16), max_tokens=8), choice, counter=None)
    out = Outcome(choice=choice, attempt=1, text=["hi"], node_in=11, node_out=5, delivered=True, complete=True)
    u = billing.bill(job, out, counter=None)
    assert (u.prompt_tokens, u.completion_tokens, u.tokens_verified) == (11, 5, False)
    assert u.cost_micros == llm_cost(PRICE, 11, 5)


def test_a_tensor_job_costs_the_request_price():
    choice = _choice(rpb.MODEL_KIND_TENSOR, context_length=0)
    job = _job(echo(os.urandom(16)), choice, counter=None)
    u = billing.bill(job, Outcome(choice=choice, attempt=1, delivered=True, complete=True), counter=None)
    assert (u.requests, u.cost_micros, u.price_per_request) == (1, PRICE.per_request, PRICE.per_request)
    assert (u.prompt_tokens, u.completion_tokens) == (0, 0)


def test_the_usage_record_carries_the_usage_and_the_job():
    choice = _choice()
    req = chat(os.urandom(16), "a b c")
    job = planning.prepare(req, (choice,), counter=WORDS, started_ns=1_700_000_000_000_000_000, t0_s=0.0)
    out = Outcome(choice=choice, attempt=1, text=["x"], node_in=job.prompt_tokens, node_out=1, delivered=True,
                  complete=True)
    u = billing.bill(job, out, counter=WORDS)
    lease = os.urandom(16)
    r = billing.record_pb(job, u, finished_ns=1_700_000_001_000_000_000, duration_ms=1000, lease_id=lease)
    assert (r.job_id, r.consumer_account_id, r.model) == (req.job_id, req.consumer_account_id, req.model)
    assert (r.cost_micros, r.completion_tokens, r.outcome) == (u.cost_micros, 1, mpb.OUTCOME_COMPLETED)
    assert r.lease_id == lease and r.cost_picos == u.cost_picos
    assert r.cost_micros == micros_ceil(r.cost_picos)  # the record shows the ceiling; clearing rounds once
    assert r.finished_at.seconds - r.started_at.seconds == 1 and r.duration_ms == 1000
    assert r.price_input_per_mtok == PRICE.per_million_input_tokens


def test_a_job_costs_exact_pico_credits_and_is_never_rounded_on_its_own():
    """20 tokens at 50,000 µcr per million tokens cost 1,000,000 pico-credits
    exactly (1 µcr); 7 tokens cost 350,000 pico-credits, shown as 1 µcr, and
    the exact cost is what the record carries."""
    price = rpb.Price(per_million_input_tokens=50_000, per_million_output_tokens=50_000)
    choice = _choice(price=price)
    job = planning.prepare(chat(os.urandom(16), "a b c d e f g"), (choice,), counter=WORDS,
                           started_ns=1, t0_s=0.0)
    out = Outcome(choice=choice, attempt=1, text=[], node_in=job.prompt_tokens, node_out=0, delivered=False,
                  complete=True)
    u = billing.bill(job, out, counter=WORDS)
    assert u.cost_picos == 50_000 * job.prompt_tokens and u.cost_micros == micros_ceil(u.cost_picos)
