"""Token counting by the platform, so that billing never rests on the node's
word: prompt and completion tokens are counted with the catalog's tokenizer
for the catalog's model name (``Model.tokenizer``, which the registry fills
from its catalog), whatever weights digest the node claims. The node's own
counts are only cross-checked (:func:`disagrees`).

    Model.tokenizer set    the platform's tokenizer of that id, or none: then
                           the job is refused before anything is reserved
                           (:func:`platform_counter`, reason
                           tokenizer_unavailable); never billed on the node's word
    Model.tokenizer ""     a node registered before the catalog: the tokenizer
                           known for the offer's name and weights digest, if
                           any; otherwise the node's counts, marked unverified
"""

from __future__ import annotations

import atexit
import functools
import json
from dataclasses import dataclass

import structlog

from idlegrid.common.errors import Unavailable
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


# The catalog's tokenizer ids the platform can count with.
TOKENIZERS = {"smollm2": _smollm2}
# Before the catalog: tokenizers known by model name and weights digest.
_KNOWN = {"smollm2-135m-instruct": (_smollm2_digest, _smollm2)}


def _load(name: str, load) -> Counter | None:
    try:
        return load()
    except Exception as e:  # noqa: BLE001 - the caller refuses or falls back
        log.warning("tokenizer.unavailable", tokenizer=name, error=str(e))
        return None


def counter_for(model: rpb.Model) -> Counter | None:
    """The platform's tokenizer for this model, if it has it."""
    if model.tokenizer:
        load = TOKENIZERS.get(model.tokenizer)
        return _load(model.tokenizer, load) if load is not None else None
    known = _KNOWN.get(model.offer.name)
    if known is None:
        return None
    digest_fn, load = known
    digest = model.offer.weights_digest
    if digest and digest != digest_fn():
        return None  # other weights under the same name: do not guess
    return _load(model.offer.name, load)


def platform_counter(model: rpb.Model) -> Counter | None:
    """The counter a language-model job is billed with: the catalog
    tokenizer's, or None for a pre-catalog model the platform cannot count
    (billed on the node's counts, unverified). Raises Unavailable when the
    catalog names a tokenizer the platform lacks."""
    counter = counter_for(model)
    if counter is None and model.tokenizer:
        raise Unavailable(f"the platform cannot count tokens for model {model.offer.name!r} (tokenizer "
                          f"{model.tokenizer!r} unavailable); nothing was charged", reason="tokenizer_unavailable")
    return counter


def text_input(prompt: str, messages: list[tuple[str, str]]) -> str:
    """The ``text_input`` tensor: a raw prompt, or a JSON chat for the node's template."""
    if messages:
        return json.dumps({"messages": [{"role": r, "content": c} for r, c in messages]})
    return prompt


def disagrees(platform: int, node: int) -> bool:
    return abs(platform - node) > max(MISMATCH_TOKENS, MISMATCH_SHARE * platform)
