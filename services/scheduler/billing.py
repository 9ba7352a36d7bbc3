"""Billing: from what a job delivered to what it costs. Pure code: plain values
in, a ``Usage`` value out, no I/O; the caller records it.

| what happened | consumer pays | provider earns |
|---|---|---|
| completed | tokens (or the request) at the node's price | cost - fee |
| stream broke midway, client left, deadline | the delivered tokens only | their cost - fee |
| no output from any attempt | nothing (the hold is released) | nothing |

For a language model, with the catalog's tokenizer (counting.py):

    prompt     = the platform's count of text_input (reused from planning)
    completion = min(the platform's count of the delivered text, max_tokens)

The node's counts are only cross-checked: a disagreement is returned as
``mismatch`` (the caller reports it), never billed. Only a model registered
before the catalog (no tokenizer named) that the platform cannot count is
billed on the node's counts, marked unverified. Then

    cost_picos = min(prompt * price_in + completion * price_out, hold * 10^6)
    cost       = ceil(cost_picos / 10^6)         shown to the caller and on the record

(exact, in pico-credits: common/clearing.py; clearing rounds once per
aggregate), and since the node's prices are within the caller's max_price (routing) and
completion <= max_tokens, the cost is within both max_price and the hold.

and for other models cost = min(price_per_request, hold) (x 10^6 in pico-credits). A job that finished
with no text still read its prompt and is billed; a job with nothing
delivered and not finished costs nothing. The fee split happens at
settlement, in the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.common.clearing import (
    PICOS_PER_MICRO,
    llm_cost_picos,
    micros_ceil,
    request_cost_picos,
)
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.scheduler import counting
from idlegrid.scheduler.dispatch import Outcome
from idlegrid.scheduler.planning import Job
from idlegrid.scheduler.v1 import scheduler_pb2 as spb


@dataclass(frozen=True, slots=True)
class Usage:
    """What a job is charged, and the facts the usage record keeps with it."""

    outcome: int  # metering Outcome: completed, partial or failed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    cost_micros: int = 0  # ceil(cost_picos / 10^6)
    cost_picos: int = 0  # the exact cost
    tokens_verified: bool = False  # counted with the model's own tokenizer
    node_prompt_tokens: int = 0
    node_completion_tokens: int = 0
    price_input_per_mtok: int = 0
    price_output_per_mtok: int = 0
    price_per_request: int = 0
    provider_account_id: bytes = b""
    provider_id: str = ""
    node_id: str = ""
    # The platform's (prompt, completion) counts, before the max_tokens cap,
    # when they disagree with the node's: a mark against the node.
    mismatch: tuple[int, int] | None = None


def billable(out: Outcome) -> bool:
    """Whether the job is charged at all (an empty completion still read the prompt)."""
    return out.choice is not None and (out.delivered or out.complete)


def bill(job: Job, out: Outcome, *, counter: counting.Counter | None) -> Usage:
    """The usage of ``job`` given what it delivered; ``counter``: the
    platform's tokenizer for the weights of the node that ran it, if any."""
    if not billable(out):
        return Usage(outcome=mpb.OUTCOME_FAILED)
    info, offer = out.choice.info, out.choice.model.offer
    facts = dict(
        outcome=mpb.OUTCOME_COMPLETED if out.complete else mpb.OUTCOME_PARTIAL,
        node_prompt_tokens=out.node_in, node_completion_tokens=out.node_out,
        provider_account_id=info.node.provider_account_id, provider_id=info.node.provider_id.hex(),
        node_id=info.node_id.hex())
    if not job.llm:
        picos = min(request_cost_picos(offer.price.per_request, 1), job.hold_micros * PICOS_PER_MICRO)
        return Usage(requests=1, cost_micros=micros_ceil(picos), cost_picos=picos,
                     price_per_request=offer.price.per_request, **facts)
    mismatch = None
    if counter is not None:
        prompt = job.prompt_tokens if counter is job.prompt_counter else counter.prompt(job.text_input)
        completion = counter.text("".join(out.text))
        if counting.disagrees(prompt, out.node_in) or counting.disagrees(completion, out.node_out):
            mismatch = (prompt, completion)
    else:
        prompt, completion = out.node_in, out.node_out
    completion = min(completion, job.max_tokens)
    picos = min(llm_cost_picos(offer.price.per_million_input_tokens, offer.price.per_million_output_tokens,
                               prompt, completion), job.hold_micros * PICOS_PER_MICRO)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, cost_micros=micros_ceil(picos), cost_picos=picos,
                 tokens_verified=counter is not None, price_input_per_mtok=offer.price.per_million_input_tokens,
                 price_output_per_mtok=offer.price.per_million_output_tokens, mismatch=mismatch, **facts)


def usage_pb(u: Usage) -> spb.Usage:
    """What the caller is told."""
    return spb.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, requests=u.requests,
                     cost_micros=u.cost_micros, tokens_verified=u.tokens_verified)


def _ts(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMicroseconds(ns // 1000)  # what PostgreSQL keeps
    return ts


def record_pb(job: Job, u: Usage, *, finished_ns: int, duration_ms: int, lease_id: bytes) -> mpb.UsageRecord:
    """The usage record metering keeps and clears with its lease."""
    req = job.request
    return mpb.UsageRecord(
        job_id=req.job_id, consumer_account_id=req.consumer_account_id, model=req.model,
        provider_account_id=u.provider_account_id, provider_id=u.provider_id, node_id=u.node_id,
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
        node_prompt_tokens=u.node_prompt_tokens, node_completion_tokens=u.node_completion_tokens,
        requests=u.requests, duration_ms=duration_ms, price_input_per_mtok=u.price_input_per_mtok,
        price_output_per_mtok=u.price_output_per_mtok, price_per_request=u.price_per_request,
        cost_micros=u.cost_micros, cost_picos=u.cost_picos, lease_id=lease_id, outcome=u.outcome,
        started_at=_ts(job.started_ns), finished_at=_ts(finished_ns))
