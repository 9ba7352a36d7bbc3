"""The demo node's cheating modes (``--cheat``) and its scoring model, on
real demo Tritons: what a dishonest node sends, and the per-token evidence a
trusted node gives a spot check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from idlegrid.demo import LLM_MODEL_NAME
from idlegrid.demo.cheats import INFLATE_FACTOR, TRUNCATE_DIVISOR, Cheater, CheatOptions
from idlegrid.demo.names import SCORE_MODEL_NAME
from tests.demo.test_demo_triton import CHAT, generate, llm_inputs

pytestmark = pytest.mark.slow  # real demo Tritons

SAMPLED = {"max_tokens": 16, "temperature": 0.7, "seed": 5}
GREEDY = {"max_tokens": 16, "temperature": 0}


def bytes_input(name: str, value: bytes) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, [1], "BYTES")
    t.set_data_from_numpy(np.array([value], dtype=np.object_))
    return t


def score(triton, text_input: str, text_output: str) -> dict[str, np.ndarray]:
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        r = client.infer(SCORE_MODEL_NAME, [bytes_input("text_input", text_input.encode()),
                                            bytes_input("text_output", text_output.encode())])
        return {name: r.as_numpy(name) for name in ("token_logprobs", "token_ranks", "token_entropies",
                                                    "num_input_tokens", "num_output_tokens")}


async def answer(triton, params: dict) -> dict:
    return (await generate(triton, llm_inputs(CHAT, stream=False, params=params, exclude_input=True)))[0]


async def test_the_scoring_model_ranks_a_greedy_answer_first_almost_everywhere(triton):
    greedy = await answer(triton, GREEDY)
    s = score(triton, CHAT, greedy["text"])
    n = int(s["num_output_tokens"][0])
    assert n == s["token_logprobs"].size == s["token_ranks"].size == s["token_entropies"].size > 0
    assert abs(n - greedy["num_output_tokens"]) <= 2  # the text re-tokenized (the end token is not text)
    assert int(s["num_input_tokens"][0]) == greedy["num_input_tokens"]
    assert np.mean(s["token_ranks"] == 1) >= 0.8  # batched prefill differs from decoding by float noise only
    assert np.all(s["token_logprobs"] <= 0) and np.all(s["token_entropies"] >= 0)


async def test_the_scoring_model_finds_unrelated_text_unlikely(triton):
    s = score(triton, CHAT, "Trombone gravel lemon 1987 vortex pamphlet slipper doorknob quasar")
    assert np.mean(s["token_logprobs"]) < -6 and np.median(s["token_ranks"]) > 10


def test_the_scoring_model_refuses_a_request_without_an_output(triton):
    with grpcclient.InferenceServerClient(triton.grpc_url) as client, pytest.raises(InferenceServerException):
        client.infer(SCORE_MODEL_NAME, [bytes_input("text_input", CHAT.encode())])


async def test_a_truncating_node_stops_early_but_claims_the_whole_budget(tritons, triton):
    cheat = tritons.own(models=(LLM_MODEL_NAME,), cheat="truncate", cheat_after=1)
    honest = await answer(triton, GREEDY)
    first = await answer(cheat, GREEDY)  # cheat_after=1: served honestly (as it would pass a canary)
    assert first["text"] == honest["text"]
    cut = await answer(cheat, GREEDY)
    assert honest["text"].startswith(cut["text"]) and len(cut["text"]) < len(honest["text"])
    assert cut["finish_reason"] == "length" and cut["num_output_tokens"] == GREEDY["max_tokens"]
    assert score(triton, CHAT, cut["text"])["num_output_tokens"][0] <= GREEDY["max_tokens"] // TRUNCATE_DIVISOR + 1


async def test_an_inflating_node_answers_honestly_and_reports_inflated_counts(tritons, triton):
    cheat = tritons.own(models=(LLM_MODEL_NAME,), cheat="inflate-tokens")
    honest, inflated = await answer(triton, GREEDY), await answer(cheat, GREEDY)
    assert inflated["text"] == honest["text"]
    assert inflated["num_output_tokens"] == INFLATE_FACTOR * honest["num_output_tokens"]
    assert inflated["num_input_tokens"] == INFLATE_FACTOR * honest["num_input_tokens"]


async def test_a_wrong_model_node_cheats_on_the_seeded_share_of_its_jobs(tritons, triton):
    options = CheatOptions("wrong-model", rate=0.5, seed=3)
    cheat = tritons.own(models=(LLM_MODEL_NAME,), cheat="wrong-model", cheat_rate=0.5, cheat_seed=3)
    cheater = Cheater(options)
    expected = [cheater.pick() is not None for _ in range(6)]
    assert 0 < sum(expected) < 6, "the seed should give a mix"
    honest = (await answer(triton, GREEDY))["text"]
    for cheated in expected:
        got = (await answer(cheat, GREEDY))["text"]
        assert (got != honest) == cheated, json.dumps({"got": got, "honest": honest, "cheated": cheated})
