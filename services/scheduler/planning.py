"""Planning a job before anything is reserved: which nodes to try and in what
order, whether the request fits their context, and how much to hold.

    plan   = up to ATTEMPTS_MAX distinct nodes (routing.plan: the caller's
             provider.order first, then routing.choose among the rest)
    prompt = the platform's token count of text_input, where it has the
             model's tokenizer; otherwise len(text_input in bytes) + 32 (an
             upper bound: a token is at least a byte, plus the chat template)
    cost   = llm_cost(price, prompt, max_tokens)    language models
           = price_per_request                      other models
    hold   = max(1, cost on plan[0])                the node actually chosen
    retry  = the later plan entries whose cost <= hold (and, for language
             models, with plan[0]'s catalog tokenizer); the others are dropped
    fits   = prompt + max_tokens <= context_length, on every kept node

The hold is sized at the price of the node tried first, never the highest in
the plan; a retry goes only where the job's maximum cost fits in that hold,
so one reservation covers every attempt and what is charged never exceeds
it. Every planned node is within the caller's max_price (routing), so
neither is the charge. Pure code: the caller waits for the node view and
resolves the tokenizer; randomness is injectable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from idlegrid.common.errors import InvalidArgument, NotFound, Unavailable
from idlegrid.common.node_view import NodeTable
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler import counting, preferences, pricing, routing
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

ATTEMPTS_MAX = 3
DEFAULT_MAX_TOKENS = 256
DEFAULT_TIMEOUT_MS = 120_000
TEMPLATE_BYTES = 32  # the chat template's share of the byte-count bound


@dataclass(frozen=True, slots=True)
class Job:
    """What was asked and planned: everything dispatch and billing need to
    know about a job before it runs."""

    request: spb.InferRequest
    plan: tuple[routing.Choice, ...]
    llm: bool  # a language model (text in, text out); otherwise tensors
    text_input: str  # the prompt tensor sent to the node ("" for tensors)
    max_tokens: int
    prompt_counter: counting.Counter | None  # the tokenizer that counted prompt_tokens
    prompt_tokens: int  # the platform's count with prompt_counter; 0 without one
    hold_micros: int  # the reservation: the most this job may cost
    timeout_s: float
    started_ns: int  # wall clock, for the usage record
    t0_s: float  # monotonic clock at the start, for the duration


def takes_text(plan: tuple[routing.Choice, ...]) -> bool:
    return plan[0].model.offer.kind == rpb.MODEL_KIND_LLM


def route(table: NodeTable, req: spb.InferRequest, *,
          rnd: random.Random = random._inst) -> tuple[routing.Choice, ...]:  # type: ignore[attr-defined]
    """The nodes to try, best first; refuses a model nobody serves, a request
    no ready node fits, and text for a tensor model (or the reverse)."""
    if not table.knows_model(req.model):
        raise NotFound(f"no node serves model {req.model!r}", reason="model_not_found")
    cands = routing.candidates(table, req)
    if not cands:
        if preferences.ceiling(req).bounded and routing.candidates(table, req, prices=False):
            raise Unavailable(f"no ready node for model {req.model!r} is priced within max_price; nothing was "
                              "charged", reason="no_node_within_max_price")
        raise Unavailable(f"no ready node for model {req.model!r} within the constraints", reason="no_node")
    want_llm = req.WhichOneof("input") == "text"
    if (cands[0][1].offer.kind == rpb.MODEL_KIND_LLM) != want_llm:
        raise InvalidArgument(
            f"model {req.model!r} takes {'text' if not want_llm else 'tensors'}, not "
            f"{'text' if want_llm else 'tensors'}")
    plan = routing.plan(cands, req.provider, rnd, attempts_max=ATTEMPTS_MAX)
    if not plan:
        raise Unavailable(f"no ready node named in provider.order serves {req.model!r}, and allow_fallbacks "
                          "is false", reason="no_node")
    return plan


def _cost(c: routing.Choice, llm: bool, prompt: int, max_tokens: int) -> int:
    price = c.model.offer.price
    return pricing.llm_cost(price, prompt, max_tokens) if llm else pricing.request_cost(price)


def within_hold(plan: tuple[routing.Choice, ...], llm: bool, prompt: int,
                max_tokens: int) -> tuple[int, tuple[routing.Choice, ...]]:
    """The hold (the job's maximum cost on plan[0]) and the plan entries
    whose maximum cost fits in it, plan[0] first."""
    hold = max(1, _cost(plan[0], llm, prompt, max_tokens))
    tokenizer = plan[0].model.tokenizer
    kept = tuple(c for c in plan if _cost(c, llm, prompt, max_tokens) <= hold
                 and (not llm or c.model.tokenizer == tokenizer))
    assert kept and kept[0] is plan[0]
    return hold, kept


def prepare(req: spb.InferRequest, plan: tuple[routing.Choice, ...], *, counter: counting.Counter | None,
            started_ns: int, t0_s: float) -> Job:
    """The job for ``plan``; ``counter`` is the platform's tokenizer for the
    first choice (None for tensors or when the platform lacks it). Raises
    InvalidArgument when the prompt and max_tokens exceed a node's context."""
    llm = takes_text(plan)
    text_in = counting.text_input(req.text.prompt, [(m.role, m.content) for m in req.text.messages]) if llm else ""
    max_tokens = req.text.max_tokens or DEFAULT_MAX_TOKENS
    counted = counter.prompt(text_in) if counter else 0
    prompt_est = counted if counter else (len(text_in.encode()) + TEMPLATE_BYTES if llm else 0)
    hold, plan = within_hold(plan, llm, prompt_est, max_tokens)
    if llm:
        for c in plan:
            ctx = c.model.offer.context_length
            if ctx and prompt_est + max_tokens > ctx:
                raise InvalidArgument(
                    f"prompt ({prompt_est} tokens) plus max_tokens ({max_tokens}) exceeds the "
                    f"model's context length ({ctx})", reason="context_length_exceeded")
    return Job(request=req, plan=plan, llm=llm, text_input=text_in, max_tokens=max_tokens, prompt_counter=counter,
               prompt_tokens=counted, hold_micros=hold, timeout_s=(req.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000,
               started_ns=started_ns, t0_s=t0_s)
