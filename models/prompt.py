"""What ``text_input`` means, and how it becomes prompt tokens.

- Plain text is a raw completion prompt, tokenized as is, with no template
  (as Triton's vLLM backend treats ``text_input``).
- A JSON object with a ``messages`` key is a chat:
  ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}``.
  The model's own chat template, read from the GGUF metadata, renders it with
  the generation prompt appended (what ``apply_chat_template(...,
  add_generation_prompt=True)`` does in transformers).

Special tokens written in the text (``<|im_start|>``) are parsed as special
tokens in both cases, as a Hugging Face tokenizer does by default.
"""

from __future__ import annotations

import dataclasses
import json

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from idlegrid.common.errors import InvalidArgument

TEXT_INPUT_BYTES_MAX = 256 * 1024
MESSAGES_MAX = 256
ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    tokens: list[int]
    is_chat: bool


def _messages(text: str) -> list[dict[str, str]] | None:
    """The chat messages when ``text`` is a chat request, else None."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "messages" not in obj:
        return None
    messages = obj["messages"]
    if not isinstance(messages, list) or not 1 <= len(messages) <= MESSAGES_MAX:
        raise InvalidArgument(f"messages must be a list of 1..{MESSAGES_MAX} messages")
    out = []
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ROLES
            or not isinstance(m.get("content"), str)
        ):
            raise InvalidArgument(
                f"messages[{i}] must be an object with role in {ROLES} and a string content"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


class PromptBuilder:
    """Turns ``text_input`` into prompt tokens for one loaded model."""

    def __init__(self, llm: llama_cpp.Llama) -> None:
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError("the GGUF file has no tokenizer.chat_template")
        self._llm = llm
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(llm.token_eos()),
            bos_token=llm._model.token_get_text(llm.token_bos()),
            add_generation_prompt=True,
        )

    def build(self, text_input: bytes) -> Prompt:
        if len(text_input) > TEXT_INPUT_BYTES_MAX:
            raise InvalidArgument(f"text_input is larger than {TEXT_INPUT_BYTES_MAX} bytes")
        try:
            text = text_input.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("text_input is not valid UTF-8") from None
        messages = _messages(text)
        if messages is None:
            # add_bos=True adds BOS only where the model's vocabulary asks for it.
            tokens = self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            return Prompt(text=text, tokens=tokens, is_chat=False)
        rendered = self._formatter(messages=messages).prompt
        # The rendered template already holds its special tokens: no extra BOS.
        tokens = self._llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
        return Prompt(text=rendered, tokens=tokens, is_chat=True)
