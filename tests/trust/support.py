"""Jobs served by a demo Triton through the scheduler's client pool and
turned into spot-check samples, as the scheduler would (tests only)."""

from __future__ import annotations

import os

from idlegrid.common.node_view import NodeInfo
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler import bounds, counting
from idlegrid.scheduler.checks_run import Sample
from idlegrid.scheduler.triton import TritonPool

LLM = "smollm2-135m-instruct"
ECHO = "echo"
CONTEXT_LENGTH = 2048


def node(url: str, name: bytes, *, trusted: bool = False) -> rpb.Node:
    """A node reached at a direct endpoint (no registry needed)."""
    return rpb.Node(node_id=name.ljust(16, b"\0"), provider_id=name.ljust(16, b"\0"), endpoint=url,
                    trusted=trusted, state=rpb.NODE_STATE_READY)


def checker(url: str) -> NodeInfo:
    n = node(url, b"checker", trusted=True)
    models = {m: rpb.Model(offer=rpb.ModelOffer(name=m), verified=True) for m in (LLM, ECHO)}
    return NodeInfo(node=n, models=models)


def platform_counter() -> counting.Counter:
    counter = counting.counter_for(rpb.Model(offer=rpb.ModelOffer(name=LLM)))
    assert counter is not None
    return counter


async def serve(pool: TritonPool, target: rpb.Node, question: str, *, temperature: float, max_tokens: int,
                seed: int = 1) -> Sample:
    """One chat job on ``target``; its sample, counted by the platform."""
    counter = platform_counter()
    text_input = counting.text_input("", [("user", question)])
    params = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}
    texts, finish = [], ""
    async for piece in pool.generate(target, LLM, "", text_input, params, stream=False,
                                     request_id=os.urandom(8).hex(), timeout_s=120,
                                     bound=bounds.for_llm(max_tokens)):
        texts.append(piece.text)
        finish = piece.finish_reason or finish
    text = "".join(texts)
    prompt, completion = counter.prompt(text_input), min(counter.text(text), max_tokens)
    return Sample(job_id=os.urandom(16), node_id=target.node_id, provider_id=target.provider_id, model=LLM,
                  llm=True, cost=prompt + completion, text_input=text_input, output_text=text, params=params,
                  finish_reason=finish or "stop", prompt_tokens=prompt, completion_tokens=completion,
                  max_tokens=max_tokens, context_length=CONTEXT_LENGTH)
