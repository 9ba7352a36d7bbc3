"""Token-by-token generation with llama-cpp-python, with exact token counts.

llama-cpp-python's own streaming completion does not say how many tokens each
chunk holds, so this loop drives ``Llama.generate`` itself: it decodes UTF-8
incrementally (a character split over two tokens is never emitted half),
holds back just enough text to catch a stop string that spans tokens, and
counts every sampled token, the end-of-generation token included (as vLLM
counts it).

Each generation starts from an empty KV cache. llama-cpp-python would
otherwise reuse the cached prefix a previous request shared with this one
and evaluate only the rest, and a prompt evaluated in two batches gets
slightly different logits from one evaluated in one (a 4-bit model on the
CPU: up to a few tenths of a nat), enough to flip a greedy choice between
near-ties. Without the cache a greedy answer is a function of the prompt
alone, as the registry's canaries and the spot checks of greedy jobs (which
must match exactly) require.
"""

from __future__ import annotations

import codecs
import dataclasses
import secrets
from collections.abc import Iterator

import llama_cpp

from idlegrid.common.errors import InvalidArgument
from idlegrid.demo.sampling import SamplingParams

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    """New text and the number of tokens sampled since the previous chunk.

    The last chunk of a generation has ``finish_reason`` set ("stop" or
    "length"); its text may be empty.
    """

    text: str
    num_output_tokens: int
    finish_reason: str | None = None


def _is_end_of_generation(llm: llama_cpp.Llama, token: int) -> bool:
    # The same test llama-cpp-python's create_completion uses.
    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))


def _find_stop(text: str, stops: tuple[str, ...]) -> int:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits, default=-1)


def generate(
    llm: llama_cpp.Llama, prompt_tokens: list[int], params: SamplingParams
) -> Iterator[Chunk]:
    """Samples up to ``params.max_tokens`` tokens after ``prompt_tokens``.

    Blocking; one generation at a time per ``Llama`` (it has one KV cache).
    """
    room = llm.n_ctx() - len(prompt_tokens)
    if room <= 0:
        raise InvalidArgument(
            f"prompt has {len(prompt_tokens)} tokens; the context window is {llm.n_ctx()}"
        )
    budget = min(params.max_tokens, room)
    llm.set_seed(params.seed if params.seed is not None else secrets.randbits(32))
    llm.reset()  # no prefix reuse: the same prompt always gives the same logits
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    holdback_chars = max((len(s) for s in params.stop), default=1) - 1
    pending = ""
    unreported_tokens = 0
    sampled = 0
    for token in llm.generate(
        prompt_tokens,
        top_k=max(params.top_k, 0),
        top_p=params.top_p,
        min_p=params.min_p,
        temp=params.temperature,
        repeat_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
    ):
        sampled += 1
        unreported_tokens += 1
        if _is_end_of_generation(llm, token):
            yield Chunk(pending + decoder.decode(b"", final=True), unreported_tokens, FINISH_STOP)
            return
        pending += decoder.decode(llm.detokenize([token]))
        stop_at = _find_stop(pending, params.stop)
        if stop_at >= 0:
            yield Chunk(pending[:stop_at], unreported_tokens, FINISH_STOP)
            return
        if sampled >= budget:
            yield Chunk(pending + decoder.decode(b"", final=True), unreported_tokens, FINISH_LENGTH)
            return
        ready = len(pending) - holdback_chars
        if ready > 0:
            yield Chunk(pending[:ready], unreported_tokens)
            pending, unreported_tokens = pending[ready:], 0
