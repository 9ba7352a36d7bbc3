"""The spot check's verdict on real outputs, really scored: jobs served by
a demo Triton (honest, or started with ``--cheat wrong-model``) and checked
on a trusted demo Triton through the scheduler's check path (greedy jobs
generated again, sampled ones scored teacher-forced by the scoring model,
tensor jobs re-run)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from idlegrid.scheduler.checks_run import CheckRun, Sample
from idlegrid.scheduler.triton import TritonPool
from idlegrid.scheduler.v1 import scheduler_pb2 as spb
from tests.trust.support import ECHO, LLM, checker, node, serve

pytestmark = pytest.mark.slow  # real demo Tritons

QUESTIONS = ("Tell me about the moon.", "Write two sentences about coffee.", "Explain prime numbers to a child.",
             "What is a glacier?")


@pytest.fixture(scope="module")
async def pool():
    p = TritonPool()
    yield p
    await p.close()


@pytest.fixture(scope="module")
def wrong_model(tritons):
    return tritons.own(models=(LLM,), cheat="wrong-model")


async def check(pool, triton, sample: Sample):
    return await CheckRun(pool, timeout_s=120).run(sample, checker(triton.grpc_url))


@pytest.mark.parametrize("temperature", [0.7, 1.0])
async def test_honest_sampled_outputs_pass(pool, triton, temperature):
    for i, q in enumerate(QUESTIONS):
        sample = await serve(pool, node(triton.grpc_url, b"honest"), q, temperature=temperature, max_tokens=24,
                             seed=i)
        verdict, cost = await check(pool, triton, sample)
        assert verdict.passed, verdict.detail
        assert cost >= sample.prompt_tokens + sample.completion_tokens - 2  # the whole prompt and output scored


async def test_honest_greedy_output_matches_the_trusted_nodes_exactly(pool, triton):
    sample = await serve(pool, node(triton.grpc_url, b"honest"), QUESTIONS[0], temperature=0.0, max_tokens=16)
    verdict, _ = await check(pool, triton, sample)
    assert verdict.passed and "matches" in verdict.detail


async def test_a_greedy_output_that_differs_in_one_word_fails(pool, triton):
    sample = await serve(pool, node(triton.grpc_url, b"honest"), QUESTIONS[1], temperature=0.0, max_tokens=16)
    words = sample.output_text.split(" ")
    words[len(words) // 2] = "banana"
    verdict, _ = await check(pool, triton, dataclasses.replace(sample, output_text=" ".join(words)))
    assert not verdict.passed and "differs" in verdict.detail


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
async def test_another_models_output_fails(pool, triton, wrong_model, temperature):
    for i, q in enumerate(QUESTIONS[:2]):
        sample = await serve(pool, node(wrong_model.grpc_url, b"cheater"), q, temperature=temperature,
                             max_tokens=24, seed=i)
        verdict, _ = await check(pool, triton, sample)
        assert not verdict.passed, verdict.detail


async def test_a_truncated_answer_claimed_as_a_length_stop_fails(pool, triton, tritons):
    truncating = tritons.own(models=(LLM,), cheat="truncate")
    sample = await serve(pool, node(truncating.grpc_url, b"cheater"), QUESTIONS[0], temperature=0.7, max_tokens=32)
    assert sample.finish_reason == "length" and sample.completion_tokens <= 32 // 4 + 1
    verdict, _ = await check(pool, triton, sample)
    assert not verdict.passed and "claimed to stop at max_tokens=32" in verdict.detail


async def test_random_text_fails(pool, triton):
    honest = await serve(pool, node(triton.grpc_url, b"honest"), QUESTIONS[2], temperature=0.7, max_tokens=24)
    junk = ("qualm zephyr ratchet obsidian 7 carburetor lullaby ; fjord wobble heliotrope quorum sprocket "
            "nimbus 42 tangerine gazebo ukulele ; marzipan")
    verdict, _ = await check(pool, triton, dataclasses.replace(honest, output_text=junk))
    assert not verdict.passed and "unlikely" in verdict.detail


def echo_sample(values: np.ndarray, served: np.ndarray) -> Sample:
    def tensor(name: str, a: np.ndarray) -> spb.Tensor:
        return spb.Tensor(name=name, datatype="FP32", shape=list(a.shape), contents=a.astype("<f4").tobytes())

    return Sample(job_id=os.urandom(16), node_id=b"n".ljust(16, b"\0"), provider_id=b"p".ljust(16, b"\0"),
                  model=ECHO, llm=False, cost=1, tensors=spb.TensorInput(inputs=[tensor("INPUT0", values)]),
                  outputs=(tensor("OUTPUT0", served),))


async def test_a_tensor_job_is_rerun_and_compared_within_a_tolerance(pool, triton):
    values = np.array([[1.0, 2.5, -3.0]], dtype=np.float32)
    verdict, cost = await check(pool, triton, echo_sample(values, values + 1e-6))
    assert verdict.passed and cost == 1, verdict.detail
    verdict, _ = await check(pool, triton, echo_sample(values, values * 1.01))
    assert not verdict.passed and "differ beyond tolerance" in verdict.detail
