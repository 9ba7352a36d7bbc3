"""Token counting by the platform, with the model's own tokenizer where the
platform has it (matched by model name and weights digest), so that billing
never rests on the node's word alone. Without one, the node's counts are used
and marked unverified."""

from __future__ import annotations

import atexit
import functools
import json
from dataclasses import dataclass

import structlog

from idlegrid.registry.v1 import registry_pb2 as rpb

log = structlog.get_logger("scheduler.tokens")

# A node's count may differ from the platform's re-tokenization of the same
# text by a little (detokenize + tokenize is not always the identity).
MISMATCH_TOKENS = 2
MISMATCH_SHARE = 0.10


@dataclass(frozen=True, slots=True)
class Counter:
    prompt: object  # callable: text_input -> token count
    text: object  # callable: generated text -> token count


@functools.cache
def _smollm2() -> Counter | None:
    try:
        import llama_cpp

        from idlegrid.models.prompt import PromptBuilder
        from idlegrid.models.weights import gguf_path
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=str(gguf_path()), vocab_only=True, verbose=False)
    atexit.register(llm.close)  # before the interpreter tears llama_cpp down
    builder = PromptBuilder(llm)
    return Counter(
        prompt=lambda text_input: len(builder.build(text_input.encode()).tokens),
        text=lambda text: len(llm.tokenize(text.encode(), add_bos=False, special=False)) if text else 0,
    )


@functools.cache
def _smollm2_digest() -> str | None:
    try:
        from idlegrid.models.weights import weights_sha256

        return "sha256:" + weights_sha256()
    except (ImportError, FileNotFoundError):
        return None


_KNOWN = {"smollm2-135m-instruct": (_smollm2_digest, _smollm2)}


def counter_for(model: rpb.Model) -> Counter | None:
    """The platform's tokenizer for what this node serves, if it has it."""
    known = _KNOWN.get(model.offer.name)
    if known is None:
        return None
    digest_fn, load = known
    digest = model.offer.weights_digest
    if digest and digest != digest_fn():
        return None  # other weights under the same name: do not guess
    try:
        return load()
    except Exception as e:  # noqa: BLE001 - counting falls back to the node's numbers
        log.warning("tokenizer.unavailable", model=model.offer.name, error=str(e))
        return None


def text_input(prompt: str, messages: list[tuple[str, str]]) -> str:
    """The ``text_input`` tensor: a raw prompt, or a JSON chat for the node's template."""
    if messages:
        return json.dumps({"messages": [{"role": r, "content": c} for r, c in messages]})
    return prompt


def disagrees(platform: int, node: int) -> bool:
    return abs(platform - node) > max(MISMATCH_TOKENS, MISMATCH_SHARE * platform)
