"""The verdict's rules on given evidence (pure code): the thresholds of a
sampled job's scores, the exact match of a greedy one, a truncation claimed
as a length stop, and tensors within tolerance."""

from __future__ import annotations

import numpy as np

from idlegrid.scheduler import checks_verdict as v
from idlegrid.scheduler.v1 import scheduler_pb2 as spb


def scores(logprobs, ranks, entropies=None) -> v.Scores:
    lp = np.asarray(logprobs, dtype=float)
    return v.Scores(logprobs=lp, ranks=np.asarray(ranks), num_input_tokens=30,
                    entropies=np.asarray(entropies if entropies is not None else -lp, dtype=float))


def test_a_likely_output_passes_and_the_figures_are_in_the_detail():
    verdict = v.sampled(scores([-1.5] * 20, [1, 2, 3, 150] * 5))
    assert verdict.passed and "mean logprob -1.50" in verdict.detail and "25% ranked past 100" in verdict.detail


def test_a_mean_logprob_below_the_threshold_fails():
    assert not v.sampled(scores([v.MEAN_LOGPROB_MIN - 0.1] * 20, [1] * 20)).passed
    assert v.sampled(scores([v.MEAN_LOGPROB_MIN + 0.1] * 20, [1] * 20)).passed


def test_too_many_tokens_outside_the_top_k_fails():
    n = 20
    over = int(n * v.HIGH_RANK_SHARE_MAX) + 1
    assert not v.sampled(scores([-1.0] * n, [v.RANK_K + 1] * over + [1] * (n - over))).passed
    assert v.sampled(scores([-1.0] * n, [v.RANK_K + 1] * (n // 2) + [1] * (n - n // 2))).passed


def test_outputs_too_short_to_judge_pass_and_say_so():
    verdict = v.sampled(scores([-15.0] * (v.TOKENS_MIN - 1), [40_000] * (v.TOKENS_MIN - 1)))
    assert verdict.passed and verdict.detail.startswith("too short")
    assert v.sampled(scores([], [])).passed


def test_greedy_outputs_must_match_exactly():
    assert v.greedy("The moon orbits Earth.", "The moon orbits Earth.").passed
    verdict = v.greedy("The moon orbits Mars.", "The moon orbits Earth.")
    assert not verdict.passed and "character 16" in verdict.detail
    assert not v.greedy("The moon", "The moon orbits Earth.").passed
    assert v.is_greedy({"temperature": 0}) and not v.is_greedy({}) and not v.is_greedy({"temperature": 0.2})


def test_a_length_stop_well_short_of_max_tokens_is_a_truncation():
    base = dict(max_tokens=64, prompt_tokens=30, context_length=2048)
    assert not v.truncation(finish_reason="length", completion_tokens=16, **base).passed
    assert v.truncation(finish_reason="length", completion_tokens=62, **base) is None  # re-tokenization slack
    assert v.truncation(finish_reason="stop", completion_tokens=3, **base) is None
    # The context window ended it, not max_tokens.
    assert v.truncation(finish_reason="length", completion_tokens=16, max_tokens=64, prompt_tokens=2030,
                        context_length=2048) is None


def test_combine_fails_if_any_fails_and_keeps_the_failures_detail():
    ok, bad = v.Verdict(True, "fine"), v.Verdict(False, "truncated")
    assert v.combine(None, ok) == ok
    assert v.combine(bad, ok) == v.Verdict(False, "truncated")


def fp32(name: str, values, shape=None) -> spb.Tensor:
    a = np.asarray(values, dtype="<f4")
    return spb.Tensor(name=name, datatype="FP32", shape=list(shape or a.shape), contents=a.tobytes())


def test_tensor_outputs_are_compared_by_name_type_shape_and_value_within_tolerance():
    ref = [fp32("OUT", [1.0, 2.0, 3.0])]
    assert v.tensors([fp32("OUT", [1.0, 2.0 + 1e-5, 3.0])], ref).passed
    assert not v.tensors([fp32("OUT", [1.0, 2.1, 3.0])], ref).passed
    assert not v.tensors([fp32("OTHER", [1.0, 2.0, 3.0])], ref).passed
    assert not v.tensors([fp32("OUT", [1.0, 2.0, 3.0], shape=[3, 1])], ref).passed
    ints = spb.Tensor(name="OUT", datatype="INT32", shape=[1], contents=np.int32(5).tobytes())
    assert v.tensors([ints], [ints]).passed
    assert not v.tensors([ints], [spb.Tensor(name="OUT", datatype="INT32", shape=[1],
                                             contents=np.int32(6).tobytes())]).passed
