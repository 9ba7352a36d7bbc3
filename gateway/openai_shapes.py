"""The response objects of OpenAI's API as idlegrid fills them:
chat.completion, chat.completion.chunk, text_completion (whole and chunked),
with ``usage`` carrying ``cost_micros`` too."""

from __future__ import annotations

from idlegrid.scheduler.v1 import scheduler_pb2 as spb


def usage(u: spb.Usage) -> dict:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens, "cost_micros": u.cost_micros}


def chat_completion(cid: str, created: int, model: str, text: str, finish_reason: str, u: spb.Usage) -> dict:
    return {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish_reason or "stop"}],
            "usage": usage(u)}


def text_completion(cid: str, created: int, model: str, text: str, finish_reason: str, u: spb.Usage) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason or "stop"}],
            "usage": usage(u)}


class Chunks:
    """Builds the chunks of one streamed response."""

    def __init__(self, chat: bool, cid: str, created: int, model: str) -> None:
        self.chat = chat
        self._base = {"id": cid, "object": "chat.completion.chunk" if chat else "text_completion",
                      "created": created, "model": model, "system_fingerprint": None}

    def _choice(self, text: str | None, finish_reason: str | None, *, first: bool = False) -> dict:
        if self.chat:
            delta: dict = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    def start(self) -> dict | None:
        """The opening chunk (chat: the assistant role), or None."""
        if not self.chat:
            return None
        return {**self._base, "choices": [self._choice("", None, first=True)]}

    def text(self, piece: str) -> dict:
        return {**self._base, "choices": [self._choice(piece, None)]}

    def final(self, finish_reason: str, u: spb.Usage | None) -> dict:
        """The chunk with the finish reason; with ``u``, the usage too (when the
        client did not ask for OpenAI's separate usage chunk)."""
        return {**self._base, "choices": [self._choice(None if self.chat else "", finish_reason or "stop")],
                "usage": usage(u) if u is not None else None}

    def usage_only(self, u: spb.Usage) -> dict:
        """The extra chunk of ``stream_options.include_usage``: no choices, only usage."""
        return {**self._base, "choices": [], "usage": usage(u)}
