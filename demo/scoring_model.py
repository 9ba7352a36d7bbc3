"""The ``smollm2-135m-instruct-score`` Triton model: teacher-forced scoring of
an output of ``smollm2-135m-instruct`` (scoring.py), what a trusted node runs
to spot-check another node's job. Not offered for sale: the scheduler calls
it on trusted nodes only (services/scheduler/spot_checks.py).

Inputs (max_batch_size 0, so every shape is per request):

| name | type | shape | |
|---|---|---|---|
| text_input | BYTES | [1] | the job's prompt, exactly as the job sent it (raw or a JSON chat) |
| text_output | BYTES | [1] | the text the node answered |
| temperature | FP32 | [1] | optional, the job's temperature (default 1; 0 is read as 1) |

Outputs (n = the output's tokens, tokenized as the platform counts them):

| name | type | shape | |
|---|---|---|---|
| token_logprobs | FP32 | [-1] | log-probability of each output token (at the temperature) |
| token_ranks | UINT32 | [-1] | rank of each output token among the vocabulary (1 = argmax) |
| token_entropies | FP32 | [-1] | entropy of the distribution each token was drawn from |
| num_input_tokens | UINT32 | [1] | prompt tokens |
| num_output_tokens | UINT32 | [1] | n |
"""

from __future__ import annotations

import asyncio
import concurrent.futures

import llama_cpp
import numpy as np
from pytriton.model_config import ModelConfig, Tensor
from pytriton.proxy.types import Request

from idlegrid.common.errors import InvalidArgument, Unavailable
from idlegrid.demo.scoring import Scores, score
from idlegrid.models.prompt import PromptBuilder

TEXT_OUTPUT_BYTES_MAX = 256 * 1024

INPUTS = (
    Tensor(name="text_input", dtype=np.bytes_, shape=(1,)),
    Tensor(name="text_output", dtype=np.bytes_, shape=(1,)),
    Tensor(name="temperature", dtype=np.float32, shape=(1,), optional=True),
)
OUTPUTS = (
    Tensor(name="token_logprobs", dtype=np.float32, shape=(-1,)),
    Tensor(name="token_ranks", dtype=np.uint32, shape=(-1,)),
    Tensor(name="token_entropies", dtype=np.float32, shape=(-1,)),
    Tensor(name="num_input_tokens", dtype=np.uint32, shape=(1,)),
    Tensor(name="num_output_tokens", dtype=np.uint32, shape=(1,)),
)
CONFIG = ModelConfig(batching=False)


def _single(request: Request, name: str) -> object | None:
    if name not in request.data:
        return None
    value = np.asarray(request[name]).reshape(-1)
    if value.size != 1:
        raise InvalidArgument(f"{name} must hold exactly one element, got {value.size}")
    return value[0]


def _bytes(request: Request, name: str) -> bytes:
    item = _single(request, name)
    if item is None:
        raise InvalidArgument(f"{name} is required")
    return item if isinstance(item, bytes) else str(item).encode("utf-8")


class ScoringModel:
    """Scores with its own ``Llama`` (its own KV cache, so scoring never
    waits for the node's generations), one request at a time on one worker
    thread; the proxy's event loop only waits."""

    def __init__(self, llm: llama_cpp.Llama, *, fail: bool = False) -> None:
        self._llm = llm
        self._prompts = PromptBuilder(llm)
        self._fail = fail
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _score(self, text_input: bytes, text_output: bytes, temperature: float) -> Scores:
        if len(text_output) > TEXT_OUTPUT_BYTES_MAX:
            raise InvalidArgument(f"text_output is larger than {TEXT_OUTPUT_BYTES_MAX} bytes")
        try:
            text = text_output.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("text_output is not valid UTF-8") from None
        prompt = self._prompts.build(text_input)
        # As the platform counts a completion (services/scheduler/counting.py).
        output = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) if text else []
        return score(self._llm, prompt.tokens, output, temperature=temperature)

    async def infer(self, requests: list[Request]) -> list[dict[str, np.ndarray]]:
        """pytriton inference callable: one response per request."""
        if self._fail:
            raise Unavailable("demo node is in failing mode")
        loop = asyncio.get_running_loop()
        responses = []
        for request in requests:
            raw_t = _single(request, "temperature")
            temperature = 1.0 if raw_t is None else float(raw_t)
            if not 0.0 <= temperature <= 2.0:
                raise InvalidArgument(f"temperature must be in [0, 2], got {temperature}")
            s = await loop.run_in_executor(
                self._worker, self._score, _bytes(request, "text_input"), _bytes(request, "text_output"),
                temperature,
            )
            responses.append({
                "token_logprobs": s.logprobs,
                "token_ranks": s.ranks,
                "token_entropies": s.entropies,
                "num_input_tokens": np.array([s.num_input_tokens], dtype=np.uint32),
                "num_output_tokens": np.array([s.num_output_tokens], dtype=np.uint32),
            })
        return responses
