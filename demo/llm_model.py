"""The ``smollm2-135m-instruct`` Triton model: tensors and the streaming
inference function, following the conventions of Triton's vLLM backend.

Inputs (max_batch_size 0, so every shape is per request):

| name | type | shape | |
|---|---|---|---|
| text_input | BYTES | [1] | raw prompt, or a JSON chat ``{"messages": [...]}`` (see prompt.py) |
| stream | BOOL | [1] | optional, default false |
| sampling_parameters | BYTES | [1] | optional JSON (see sampling.py) |
| exclude_input_in_output | BOOL | [1] | optional; default: true when streaming, else false |
| return_finish_reason | BOOL | [1] | optional, accepted for vLLM clients |
| return_num_input_tokens | BOOL | [1] | optional, accepted for vLLM clients |
| return_num_output_tokens | BOOL | [1] | optional, accepted for vLLM clients |

Outputs, declared with dims [-1] as vLLM declares them and holding one
element per response, on every response (vLLM sends the last three
only when the matching ``return_*`` input is true; sending them always is a
superset, and a client may still ask for a subset of outputs):

| name | type | |
|---|---|---|
| text_output | BYTES | stream: the new text since the previous response; else the whole text |
| finish_reason | BYTES | "stop" or "length" on the last response, "None" before it (as vLLM) |
| num_input_tokens | UINT32 | prompt tokens, the same on every response |
| num_output_tokens | UINT32 | tokens generated since the previous response (vLLM's delta) |

The model is decoupled. With ``stream`` true it sends one response per new
piece of text (about one per token; the sum of ``num_output_tokens`` over
the responses is the total), and the last one carries the finish reason.
With ``stream`` false it sends one response with the whole text and the
totals. Either way Triton then closes the request with an empty final
response (seen only by gRPC clients that set ``enable_empty_final_response``).

A node started with ``--cheat`` changes what it generates or reports on the
jobs it cheats on (cheats.py); the tensors stay the same.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable

import llama_cpp
import numpy as np
import structlog
from pytriton.model_config import ModelConfig, Tensor
from pytriton.proxy.types import Request

from idlegrid.common.errors import InvalidArgument, Unavailable
from idlegrid.demo import cheats
from idlegrid.demo.generation import Chunk
from idlegrid.demo.sampling import MAX_TOKENS_MAX, SamplingParams, parse_sampling_params
from idlegrid.models.prompt import Prompt, PromptBuilder

_FLAGS = (
    "stream",
    "exclude_input_in_output",
    "return_finish_reason",
    "return_num_input_tokens",
    "return_num_output_tokens",
)
INPUTS = (
    Tensor(name="text_input", dtype=np.bytes_, shape=(1,)),
    Tensor(name="sampling_parameters", dtype=np.bytes_, shape=(1,), optional=True),
    *(Tensor(name=flag, dtype=np.bool_, shape=(1,), optional=True) for flag in _FLAGS),
)
OUTPUTS = (
    Tensor(name="text_output", dtype=np.bytes_, shape=(-1,)),
    Tensor(name="finish_reason", dtype=np.bytes_, shape=(-1,)),
    Tensor(name="num_input_tokens", dtype=np.uint32, shape=(-1,)),
    Tensor(name="num_output_tokens", dtype=np.uint32, shape=(-1,)),
)
CONFIG = ModelConfig(batching=False, decoupled=True)

log = structlog.get_logger(__name__)


def _flag(request: Request, name: str) -> bool | None:
    if name not in request.data:
        return None
    return bool(np.asarray(request[name]).reshape(-1)[0])


def _single_bytes(request: Request, name: str) -> bytes | None:
    if name not in request.data:
        return None
    value = np.asarray(request[name]).reshape(-1)
    if value.size != 1:
        raise InvalidArgument(f"{name} must hold exactly one element, got {value.size}")
    item = value[0]
    return item if isinstance(item, bytes) else str(item).encode("utf-8")


def _response(text: str, finish_reason: str | None, n_in: int, n_out: int) -> dict[str, np.ndarray]:
    return {
        "text_output": np.array([text.encode("utf-8")], dtype=np.object_),
        "finish_reason": np.array([str(finish_reason).encode("utf-8")], dtype=np.object_),
        "num_input_tokens": np.array([n_in], dtype=np.uint32),
        "num_output_tokens": np.array([n_out], dtype=np.uint32),
    }


class LlmModel:
    """Serves one ``Llama``. Generations run one at a time (it has one KV
    cache), each wholly on one worker thread, which hands its chunks to the
    proxy's event loop; the loop only waits, so it stays free."""

    def __init__(
        self, llm: llama_cpp.Llama, *, token_delay_ms: int = 0, fail: bool = False,
        fail_after: int = -1, extra_tokens: int = 0, cheat: cheats.CheatOptions | None = None,
    ) -> None:
        if token_delay_ms < 0:
            raise ValueError(f"token_delay_ms must be >= 0, got {token_delay_ms}")
        self._llm = llm
        self._prompts = PromptBuilder(llm)
        self._token_delay_s = token_delay_ms / 1000
        self._fail = fail
        self._fail_after = fail_after  # >= 0: serve this many requests, then fail
        self._extra_tokens = extra_tokens  # > 0: a flooding node, past max_tokens
        self._served = 0
        # A cheating node (cheats.py): decided job by job, on the event loop.
        self._cheater = cheats.Cheater(cheat) if cheat is not None and cheat.mode else None
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="smollm2"
        )

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _generate(
        self,
        text_input: bytes,
        params: SamplingParams,
        put: Callable[[Prompt | Chunk | Exception], None],
        cancelled: threading.Event,
        cheat: cheats.Cheat | None = None,
    ) -> None:
        """Worker thread: the prompt, then each chunk, or an exception."""
        try:
            prompt = self._prompts.build(text_input)
            put(prompt)
            for chunk in cheats.chunks(cheat, self._llm, prompt.tokens, params):
                if cancelled.is_set():
                    return
                put(chunk)
        except Exception as e:  # handed to the request, which raises it
            put(e)

    async def infer(self, requests: list[Request]) -> AsyncIterator[list[dict[str, np.ndarray]]]:
        """pytriton inference callable (an async generator: decoupled model)."""
        if len(requests) != 1:
            # max_batch_size is 0: Triton hands this model one request per call.
            raise RuntimeError(f"expected one request per call, got {len(requests)}")
        if self._fail or 0 <= self._fail_after <= self._served:
            raise Unavailable("demo node is in failing mode")
        self._served += 1
        request = requests[0]
        text_input = _single_bytes(request, "text_input")
        if text_input is None:
            raise InvalidArgument("text_input is required")
        params = parse_sampling_params(_single_bytes(request, "sampling_parameters"))
        if self._extra_tokens:
            params = dataclasses.replace(params, max_tokens=params.max_tokens + self._extra_tokens)
        stream = bool(_flag(request, "stream"))
        exclude = _flag(request, "exclude_input_in_output")
        prepend_input = not stream if exclude is None else not exclude
        if stream and prepend_input:
            raise InvalidArgument("exclude_input_in_output=false is not allowed when streaming")

        loop = asyncio.get_running_loop()
        # The prompt, at most one chunk per token, or one exception: never full.
        items: asyncio.Queue[Prompt | Chunk | Exception] = asyncio.Queue(maxsize=MAX_TOKENS_MAX + 1)
        cancelled = threading.Event()

        def put(item: Prompt | Chunk | Exception) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        async def next_item() -> Prompt | Chunk:
            item = await items.get()
            if isinstance(item, Exception):
                raise item
            return item

        cheat = self._cheater.pick() if self._cheater is not None else None
        loop.run_in_executor(self._worker, self._generate, text_input, cheats.run_params(cheat, params), put,
                             cancelled, cheat)
        try:
            prompt = await next_item()
            assert isinstance(prompt, Prompt)
            n_in = cheats.reported_input_tokens(cheat, len(prompt.tokens))
            texts: list[str] = [prompt.text] if prepend_input else []
            n_out = 0
            while True:
                chunk = await next_item()
                assert isinstance(chunk, Chunk)
                chunk = cheats.reported_chunk(cheat, chunk, sent_tokens=n_out, max_tokens=params.max_tokens)
                n_out += chunk.num_output_tokens
                if self._token_delay_s:
                    await asyncio.sleep(self._token_delay_s * chunk.num_output_tokens)
                if stream:
                    yield [
                        _response(chunk.text, chunk.finish_reason, n_in, chunk.num_output_tokens)
                    ]
                else:
                    texts.append(chunk.text)
                if chunk.finish_reason is not None:
                    break
        finally:
            cancelled.set()
        if not stream:
            yield [_response("".join(texts), chunk.finish_reason, n_in, n_out)]
        log.debug(
            "llm_request_done",
            stream=stream,
            num_input_tokens=n_in,
            num_output_tokens=n_out,
            finish_reason=chunk.finish_reason,
            cheat=cheat.mode if cheat is not None else None,
        )
