"""Costs in integer micro-credits. Token prices are per million tokens; a
cost is rounded up to the next micro-credit, once, over the whole job."""

from __future__ import annotations

from idlegrid.registry.v1 import registry_pb2 as rpb

MILLION = 1_000_000


def llm_cost(price: rpb.Price, prompt_tokens: int, completion_tokens: int) -> int:
    total = prompt_tokens * price.per_million_input_tokens + completion_tokens * price.per_million_output_tokens
    return -(-total // MILLION)


def request_cost(price: rpb.Price) -> int:
    return price.per_request
