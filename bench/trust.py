"""``idlegrid bench trust``: how fast spot checks catch a cheating node, what
they cost, and that they never accuse an honest one.

1. Two demo Tritons on this machine: an honest node serving SmolLM2 and its
   scoring companion (the trusted checker), and a node started with
   ``--cheat wrong-model``.
2. A corpus of real jobs: chat prompts, greedy or sampled (temperature 0.7
   or 1), served by each node through the scheduler's client pool, counted
   with the platform's tokenizer, and each checked for real on the trusted
   node by the scheduler's check path (checks_run.CheckRun: greedy jobs
   generated again, sampled jobs scored teacher-forced) and judged by the
   real verdict (checks_verdict).
3. A simulation (trust_sim.py) of a marketplace of honest established nodes
   and one new node cheating on every job, or on 30 % or 10 % of them,
   through the real sampler, budget and sampling rates, each checked job
   taking the verdict and cost of a corpus item.

Figures: ``detected_within_jobs_p99`` (cheating on every job; target <= 100)
and the same at cheat rates 0.3 and 0.1; ``extra_compute_fraction``, check
tokens over served tokens (target <= 0.05; ``..._wall`` the same in measured
seconds); ``honest_false_positives``: honest jobs that failed a check, in
the corpus and in the simulation (must be 0).
"""

from __future__ import annotations

import asyncio
import os
import random
import time

from idlegrid.bench.kit import report
from idlegrid.bench.trust_sim import Item, Simulation, p99
from idlegrid.common.node_view import NodeInfo
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler import bounds, counting
from idlegrid.scheduler.checks_run import CheckRun, Sample
from idlegrid.scheduler.triton import TritonPool

QUESTIONS = [f"{form} {topic}." for topic in (
    "the moon", "coffee", "python lists", "the french revolution", "photosynthesis", "bicycles", "volcanoes",
    "jazz music", "the ocean", "prime numbers", "chess", "rain", "honeybees", "trains", "glaciers", "bread")
    for form in ("Tell me about", "Write two sentences about", "Explain to a child")]
TEMPERATURES = (0.0, 0.7, 1.0)
HONEST_NODES = 19
BUDGET_SHARE = 0.05
CHEAT_RATES = (1.0, 0.3, 0.1)
TIMEOUT_S = 120.0
CONTEXT_LENGTH = 2048
SEED = 11


def _node(name: bytes, url: str, *, trusted: bool = False) -> rpb.Node:
    return rpb.Node(node_id=name.ljust(16, b"\0"), provider_id=name.ljust(16, b"\0"), endpoint=url, trusted=trusted,
                    state=rpb.NODE_STATE_READY)


async def _serve(pool: TritonPool, node: rpb.Node, counter, question: str, temperature: float, max_tokens: int,
                 seed: int) -> tuple[Sample, float]:
    """One job on ``node``, as the scheduler would send it and bill it."""
    from idlegrid.demo.names import LLM_MODEL_NAME

    text_input = counting.text_input("", [("user", question)])
    params = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}
    texts, finish = [], ""
    t = time.perf_counter()
    async for piece in pool.generate(node, LLM_MODEL_NAME, "", text_input, params, stream=False,
                                     request_id=os.urandom(8).hex(), timeout_s=TIMEOUT_S,
                                     bound=bounds.for_llm(max_tokens)):
        texts.append(piece.text)
        finish = piece.finish_reason or finish
    serve_s = time.perf_counter() - t
    text = "".join(texts)
    prompt, completion = counter.prompt(text_input), min(counter.text(text), max_tokens)
    return Sample(job_id=os.urandom(16), node_id=node.node_id, provider_id=node.provider_id, model=LLM_MODEL_NAME,
                  llm=True, cost=prompt + completion, text_input=text_input, output_text=text, params=params,
                  finish_reason=finish or "stop", prompt_tokens=prompt, completion_tokens=completion,
                  max_tokens=max_tokens, context_length=CONTEXT_LENGTH), serve_s


async def corpus(honest_url: str, cheat_url: str, *, honest_n: int, cheat_n: int, max_tokens: int,
                 rng: random.Random) -> tuple[list[Item], list[Item]]:
    """Real jobs on each node, each really checked on the trusted node."""
    from idlegrid.demo.names import LLM_MODEL_NAME

    counter = counting.counter_for(rpb.Model(offer=rpb.ModelOffer(name=LLM_MODEL_NAME)))
    assert counter is not None, "the platform's tokenizer for SmolLM2 is unavailable"
    pool = TritonPool()
    checker_node = _node(b"checker", honest_url, trusted=True)
    checker = NodeInfo(node=checker_node, models={LLM_MODEL_NAME: rpb.Model(
        offer=rpb.ModelOffer(name=LLM_MODEL_NAME, kind=rpb.MODEL_KIND_LLM), verified=True)})
    run = CheckRun(pool, timeout_s=TIMEOUT_S)
    nodes = {True: _node(b"honest", honest_url), False: _node(b"cheater", cheat_url)}
    items: dict[bool, list[Item]] = {True: [], False: []}
    try:
        for honest, n in ((True, honest_n), (False, cheat_n)):
            for i in range(n):
                question = QUESTIONS[rng.randrange(len(QUESTIONS))]
                temperature = TEMPERATURES[i % len(TEMPERATURES)]
                sample, serve_s = await _serve(pool, nodes[honest], counter, question, temperature, max_tokens,
                                               rng.randrange(2**31))
                t = time.perf_counter()
                verdict, cost = await run.run(sample, checker)
                items[honest].append(Item(sample, honest, verdict.passed, cost, serve_s, time.perf_counter() - t))
    finally:
        await pool.close()
    return items[True], items[False]


async def _start_tritons() -> list:
    """The honest node with the scoring companion, and the cheating node, started side by side."""
    from idlegrid.demo import start_demo_triton
    from idlegrid.demo.names import LLM_MODEL_NAME, SCORE_MODEL_NAME, WRONG_MODEL

    started = await asyncio.gather(
        asyncio.to_thread(start_demo_triton, models=(LLM_MODEL_NAME, SCORE_MODEL_NAME)),
        asyncio.to_thread(start_demo_triton, models=(LLM_MODEL_NAME,), cheat=WRONG_MODEL), return_exceptions=True)
    failed = [s for s in started if isinstance(s, BaseException)]
    if failed:
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in started if not isinstance(s, BaseException)))
        raise failed[0]
    return list(started)


async def run(args, config) -> int:
    quick = bool(args.quick)
    honest_n, cheat_n, max_tokens = (6, 3, 16) if quick else (36, 18, 40)
    trials, jobs_max = (200, 1_000) if quick else (1_000, 3_000)
    seed = SEED if args.seed is None else args.seed
    rng = random.Random(seed)
    started = time.perf_counter()
    tritons = await _start_tritons()
    try:
        honest, cheats = await corpus(tritons[0].grpc_url, tritons[1].grpc_url, honest_n=honest_n, cheat_n=cheat_n,
                                      max_tokens=max_tokens, rng=rng)
    finally:
        await asyncio.gather(*(asyncio.to_thread(t.stop) for t in tritons))
    sim = Simulation(honest, cheats, BUDGET_SHARE, HONEST_NODES, jobs_max)
    detections = {rate: [sim.trial(rate, random.Random(rng.randrange(2**32))) for _ in range(trials)]
                  for rate in CHEAT_RATES}
    t = sim.totals
    corpus_fp = sum(not i.passed for i in honest)
    result = {
        "detected_within_jobs_p99": p99(detections[1.0], jobs_max),
        "detected_within_jobs_p99_rate_0.3": p99(detections[0.3], jobs_max),
        "detected_within_jobs_p99_rate_0.1": p99(detections[0.1], jobs_max),
        "extra_compute_fraction": round(t.checked_tokens / t.served_tokens, 4),
        "extra_compute_fraction_wall": round(t.checked_s / t.served_s, 4),
        "honest_false_positives": corpus_fp + t.honest_false_positives,
        "cheat_items_caught": f"{sum(not i.passed for i in cheats)}/{len(cheats)}",
        "honest_items": len(honest), "honest_checks_simulated": t.honest_checks,
        "trials": trials, "jobs_max": jobs_max, "honest_nodes": HONEST_NODES, "budget_share": BUDGET_SHARE,
        "max_tokens": max_tokens, "seed": seed, "wall_s": round(time.perf_counter() - started, 1),
    }
    report("trust bench (spot checks: real scoring on a demo Triton, simulated marketplace)", result,
           as_json=args.json)
    return 0
