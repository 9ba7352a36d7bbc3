"""The verdict of a spot check: did the node really run the model it is paid
for? Pure code: the evidence in, a ``Verdict`` out.

Language models, greedy jobs (temperature 0). The output must equal, exactly,
what the trusted node generates greedily for the same prompt and parameters.

Language models, sampled jobs. The trusted node scores the output with the
reference model, teacher-forced (the prompt, then the output's tokens; see
the demo's scoring model): each token's log-probability at the job's
temperature and its rank in the vocabulary (1 = the model's first choice).
The job fails when

    mean logprob            < MEAN_LOGPROB_MIN     (-6 nats per token), or
    share of rank > RANK_K  > HIGH_RANK_SHARE_MAX  (more than half of the tokens
                                                    outside the model's top 100)

Why these numbers: measured on SmolLM2-135M-Instruct (the demo's model), 40
prompts, 40-token answers. Honest outputs sampled at temperature 0.7 scored a
mean logprob of -0.4 to -1.9 and at temperature 1 (no top-k, no top-p: the
noisiest sampling there is) -0.6 to -3.7, with at most 20 % of tokens ranked
past 100. Another model's output (random tokens, or the same weights at
temperature 2) scored -9.7 to -14.7, with 68 % to 100 % past rank 100.
Both thresholds sit in the gap with a margin on the honest side: a
false accusation suspends an honest provider, so missing a subtle cheat
once is the cheaper error; sampling again catches it later. Outputs of fewer
than TOKENS_MIN tokens are not judged this way (a mean or a share of a few
tokens is noise); the sampler does not pick them.

Any language-model job also fails when it claims to have stopped at its
length limit ("length") with clearly fewer tokens than max_tokens, while the
context window left room (a truncating node).

Tensor models. The trusted node re-runs the request; every output must have
the same name, datatype and shape, and values equal within
|a - b| <= TENSOR_ATOL + TENSOR_RTOL * |b| (floating point differs a little
across GPUs, kernels and batch sizes), exactly for integers and bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from idlegrid.scheduler.triton import to_numpy
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

MEAN_LOGPROB_MIN = -6.0
RANK_K = 100
HIGH_RANK_SHARE_MAX = 0.5
TOKENS_MIN = 8
TRUNCATION_SLACK_TOKENS = 2  # re-tokenizing a text may differ a little from the tokens generated
TRUNCATION_SLACK_SHARE = 0.10
TENSOR_ATOL = 1e-4
TENSOR_RTOL = 1e-3
DETAIL_CHARS_MAX = 1024  # registry.proto's limit


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Scores:
    """The scoring model's answer for one output."""

    logprobs: np.ndarray  # float, one per output token
    ranks: np.ndarray  # int, 1 = the model's first choice
    entropies: np.ndarray  # float, the expected -logprob of an honest sample
    num_input_tokens: int

    @property
    def num_output_tokens(self) -> int:
        return int(self.logprobs.size)


def is_greedy(params: dict) -> bool:
    """Temperature 0 (the vLLM default, when unset, is 1)."""
    return float(params.get("temperature", 1.0)) == 0.0


def _clip(text: str) -> str:
    return text[:DETAIL_CHARS_MAX]


def combine(*verdicts: Verdict | None) -> Verdict:
    """Fails if any fails; the details of the failures (else of all), joined."""
    given = [v for v in verdicts if v is not None]
    failed = [v for v in given if not v.passed]
    return Verdict(not failed, _clip("; ".join(v.detail for v in (failed or given))))


def truncation(*, finish_reason: str, completion_tokens: int, max_tokens: int, prompt_tokens: int,
               context_length: int) -> Verdict | None:
    """A failing verdict when a "length" finish came clearly short of
    max_tokens with room left in the context window; else None."""
    if finish_reason != "length":
        return None
    slack = max(TRUNCATION_SLACK_TOKENS, math.ceil(TRUNCATION_SLACK_SHARE * max_tokens))
    if completion_tokens + slack >= max_tokens:
        return None
    if context_length and prompt_tokens + completion_tokens + slack >= context_length:
        return None  # the context window, not max_tokens, ended it
    return Verdict(False, f"claimed to stop at max_tokens={max_tokens} but delivered {completion_tokens} tokens")


def greedy(served: str, reference: str) -> Verdict:
    if served == reference:
        return Verdict(True, f"greedy output matches the trusted node's ({len(served)} characters)")
    at = next((i for i, (a, b) in enumerate(zip(served, reference, strict=False)) if a != b),
              min(len(served), len(reference)))
    return Verdict(False, _clip(
        f"greedy output differs from the trusted node's at character {at} "
        f"(served {len(served)} characters, reference {len(reference)}): "
        f"served {served[at:at + 40]!r}, reference {reference[at:at + 40]!r}"))


def sampled(scores: Scores) -> Verdict:
    n = scores.num_output_tokens
    if n == 0:
        return Verdict(True, "empty output")
    mean = float(np.mean(scores.logprobs))
    high = float(np.mean(scores.ranks > RANK_K))
    surprise = float(np.mean(scores.logprobs + scores.entropies))  # about 0 for honest samples
    figures = (f"{n} tokens: mean logprob {mean:.2f} (min {MEAN_LOGPROB_MIN}), "
               f"{high:.0%} ranked past {RANK_K} (max {HIGH_RANK_SHARE_MAX:.0%}), "
               f"excess surprise {surprise:.2f} nats/token")
    if n < TOKENS_MIN:
        return Verdict(True, f"too short to judge: {figures}")
    if not math.isfinite(mean) or mean < MEAN_LOGPROB_MIN or high > HIGH_RANK_SHARE_MAX:
        return Verdict(False, _clip(f"output unlikely under the reference model: {figures}"))
    return Verdict(True, _clip(figures))


def tensors(served: list[spb.Tensor], reference: list[spb.Tensor]) -> Verdict:
    mine = {t.name: t for t in served}
    theirs = {t.name: t for t in reference}
    if mine.keys() != theirs.keys():
        return Verdict(False, _clip(f"outputs {sorted(mine)} differ from the trusted node's {sorted(theirs)}"))
    for name in sorted(mine):
        a, b = mine[name], theirs[name]
        if a.datatype != b.datatype or list(a.shape) != list(b.shape):
            return Verdict(False, _clip(f"output {name!r}: {a.datatype}{list(a.shape)} where the trusted node "
                                        f"gave {b.datatype}{list(b.shape)}"))
        if a.datatype in ("FP16", "BF16", "FP32", "FP64"):
            x, y = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
            bad = ~np.isclose(x, y, rtol=TENSOR_RTOL, atol=TENSOR_ATOL, equal_nan=True)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                return Verdict(False, _clip(f"output {name!r}: {int(bad.sum())} of {bad.size} values differ "
                                            f"beyond tolerance (first at {i}: {x.flat[i]!r} vs {y.flat[i]!r})"))
        elif a.contents != b.contents:
            return Verdict(False, _clip(f"output {name!r}: values differ from the trusted node's"))
    return Verdict(True, f"{len(mine)} outputs match the trusted node's within tolerance")
