"""One spot check on a trusted node, through the scheduler's own client pool
(TritonPool: the relay that holds the node's link, or a direct endpoint),
with a deadline and a bound on what the node may send back.

A sampled language-model job is scored by the model's scoring companion,
``<model>-score`` (SCORE_SUFFIX): a model with the same weights that takes
the job's ``text_input`` and the served ``text_output`` (and the job's
temperature) and returns, per output token, ``token_logprobs``,
``token_ranks`` and ``token_entropies`` (the demo's scoring_model.py is one).
A trusted node serves it without offering it for sale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tritonclient.utils import serialize_byte_tensor

from idlegrid.common.node_view import NodeInfo
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.scheduler import bounds
from idlegrid.scheduler import checks_verdict as verdicts
from idlegrid.scheduler.bounds import ReplyBound
from idlegrid.scheduler.dispatch import Outcome, sampling_parameters
from idlegrid.scheduler.planning import Job
from idlegrid.scheduler.triton import NodeError, TritonPool, to_numpy
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

SCORE_SUFFIX = "-score"
SCORE_OUTPUTS = ("token_logprobs", "token_ranks", "token_entropies", "num_input_tokens", "num_output_tokens")
_SCORE_BYTES_PER_TOKEN = 16  # three 4-byte values per token, with margin
_SCORE_TOKENS_SLACK = 256  # the scorer's tokenization may differ a little from the platform's count
_SCORE_OVERHEAD_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Sample:
    """What a spot check needs to know about a completed job."""

    job_id: bytes
    node_id: bytes
    provider_id: bytes
    model: str
    llm: bool
    cost: int  # compute served: prompt + completion tokens, or 1 request
    # Language models:
    text_input: str = ""
    output_text: str = ""
    params: dict = field(default_factory=dict)  # sampling_parameters, as sent to the node
    finish_reason: str = ""
    prompt_tokens: int = 0  # the platform's counts
    completion_tokens: int = 0
    max_tokens: int = 0
    context_length: int = 0
    # Tensor models:
    tensors: spb.TensorInput | None = None
    outputs: tuple[spb.Tensor, ...] = ()


def sample_of(job: Job, out: Outcome, record: mpb.UsageRecord) -> Sample | None:
    """The sample for a job that completed on a node; None otherwise."""
    if not out.complete or out.choice is None or record.outcome != mpb.OUTCOME_COMPLETED:
        return None
    info, offer = out.choice.info, out.choice.model.offer
    common = dict(job_id=job.request.job_id, node_id=info.node_id, provider_id=info.node.provider_id,
                  model=job.request.model)
    if not job.llm:
        return Sample(llm=False, cost=1, tensors=job.request.tensors, outputs=tuple(out.outputs), **common)
    return Sample(llm=True, cost=record.prompt_tokens + record.completion_tokens, text_input=job.text_input,
                  output_text="".join(out.text), params=sampling_parameters(job), finish_reason=out.finish_reason,
                  prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens,
                  max_tokens=job.max_tokens, context_length=offer.context_length, **common)


def _bytes(name: str, value: bytes) -> spb.Tensor:
    return spb.Tensor(name=name, datatype="BYTES", shape=[1],
                      contents=serialize_byte_tensor(np.array([value], dtype=np.object_)).item())


def _fp32(name: str, value: float) -> spb.Tensor:
    return spb.Tensor(name=name, datatype="FP32", shape=[1], contents=np.array([value], dtype="<f4").tobytes())


def score_request(sample: Sample) -> spb.TensorInput:
    """The scoring companion's request for a sampled job."""
    temperature = float(sample.params.get("temperature", 1.0))
    return spb.TensorInput(inputs=[_bytes("text_input", sample.text_input.encode()),
                                   _bytes("text_output", sample.output_text.encode()),
                                   _fp32("temperature", temperature)], outputs=list(SCORE_OUTPUTS))


def scores_of(outputs: list[spb.Tensor]) -> verdicts.Scores:
    """The scoring companion's answer; NodeError when it is malformed."""
    by_name = {t.name: t for t in outputs}
    try:
        arrays = {name: to_numpy(by_name[name]).reshape(-1) for name in SCORE_OUTPUTS}
    except Exception as e:  # a missing output, or contents that do not fit: the checker's fault
        raise NodeError(f"malformed scoring answer: {e!r}") from None
    n = arrays["token_logprobs"].size
    if arrays["token_ranks"].size != n or arrays["token_entropies"].size != n or arrays["num_input_tokens"].size != 1:
        raise NodeError("malformed scoring answer: per-token outputs of different lengths")
    return verdicts.Scores(logprobs=arrays["token_logprobs"].astype(np.float64),
                           ranks=arrays["token_ranks"].astype(np.int64),
                           entropies=arrays["token_entropies"].astype(np.float64),
                           num_input_tokens=int(arrays["num_input_tokens"][0]))


class CheckRun:
    """Runs checks on trusted nodes; each returns (verdict, compute spent)."""

    def __init__(self, triton: TritonPool, *, timeout_s: float) -> None:
        self._triton = triton
        self._timeout_s = timeout_s

    async def run(self, sample: Sample, checker: NodeInfo) -> tuple[verdicts.Verdict, int]:
        if not sample.llm:
            return await self.rerun(sample, checker), 1
        cut = verdicts.truncation(finish_reason=sample.finish_reason, completion_tokens=sample.completion_tokens,
                                  max_tokens=sample.max_tokens, prompt_tokens=sample.prompt_tokens,
                                  context_length=sample.context_length)
        if verdicts.is_greedy(sample.params):
            text, generated = await self.regenerate(sample, checker)
            return verdicts.combine(cut, verdicts.greedy(sample.output_text, text)), sample.prompt_tokens + generated
        scores = await self.score(sample, checker)
        return (verdicts.combine(cut, verdicts.sampled(scores)),
                scores.num_input_tokens + scores.num_output_tokens)

    async def regenerate(self, sample: Sample, checker: NodeInfo) -> tuple[str, int]:
        """The trusted node's greedy answer, and the tokens it generated."""
        model = checker.models.get(sample.model)
        version = model.offer.version if model is not None else ""
        texts, generated = [], 0
        async for piece in self._triton.generate(
                checker.node, sample.model, version, sample.text_input, {**sample.params, "temperature": 0.0},
                stream=False, request_id=f"check-{sample.job_id.hex()}", timeout_s=self._timeout_s,
                bound=bounds.for_llm(sample.max_tokens)):
            texts.append(piece.text)
            generated += piece.output_tokens
        return "".join(texts), generated

    async def score(self, sample: Sample, checker: NodeInfo) -> verdicts.Scores:
        tokens = sample.completion_tokens + _SCORE_TOKENS_SLACK
        bound = ReplyBound(1, tokens * _SCORE_BYTES_PER_TOKEN + _SCORE_OVERHEAD_BYTES)
        outputs = await self._triton.infer(
            checker.node, sample.model + SCORE_SUFFIX, "", score_request(sample),
            request_id=f"check-{sample.job_id.hex()}", timeout_s=self._timeout_s, bound=bound)
        return scores_of(outputs)

    async def rerun(self, sample: Sample, checker: NodeInfo) -> verdicts.Verdict:
        assert sample.tensors is not None
        model = checker.models.get(sample.model)
        version = model.offer.version if model is not None else ""
        outputs = await self._triton.infer(
            checker.node, sample.model, version, sample.tensors, request_id=f"check-{sample.job_id.hex()}",
            timeout_s=self._timeout_s, bound=bounds.for_tensors(None))
        served = list(sample.outputs)
        if sample.tensors.outputs:
            wanted = set(sample.tensors.outputs)
            served = [t for t in served if t.name in wanted]
        return verdicts.tensors(served, outputs)
