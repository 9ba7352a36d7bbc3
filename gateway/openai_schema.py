"""OpenAI request bodies (chat completions, completions) checked and turned
into the scheduler's TextGeneration. Whatever the gateway cannot honour is a
400 naming the field, never silently ignored: n > 1, tools, function calls,
log probabilities, response formats other than text, penalties, roles other
than system / developer / user / assistant, non-text content parts.
OpenRouter's ``provider`` object (price ceilings and placement) is read by
provider_prefs.py."""

from __future__ import annotations

from dataclasses import dataclass

from idlegrid.gateway import bodies, provider_prefs
from idlegrid.gateway.errors import bad_request
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

MAX_TOKENS_MAX = 32_768
MESSAGES_MAX = 256
STOPS_MAX = 16
STOP_CHARS_MAX = 256
MODEL_CHARS_MAX = 128
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

_COMMON = frozenset({
    "model", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options", "user",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "provider",
})
CHAT_FIELDS = _COMMON | {
    "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "functions", "function_call",
    "response_format", "parallel_tool_calls", "store", "metadata", "service_tier",
}
COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "suffix", "best_of"}


@dataclass(frozen=True, slots=True)
class TextRequest:
    model: str
    text: spb.TextGeneration
    stream: bool
    include_usage: bool
    provider: spb.ProviderPreferences | None = None  # OpenRouter's provider object


def _model(body: dict) -> str:
    model = bodies.string(body, "model", required_=True, max_len=MODEL_CHARS_MAX)
    if not model:
        raise bad_request("'model' must not be empty", param="model")
    return model


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("'stop' must be a string or a list of strings", param="stop", code="invalid_type")
    if len(stops) > STOPS_MAX or any(not s or len(s) > STOP_CHARS_MAX for s in stops):
        raise bad_request(f"'stop' takes at most {STOPS_MAX} non-empty strings of at most {STOP_CHARS_MAX} "
                          "characters", param="stop")
    return stops


def _common(body: dict, text: spb.TextGeneration) -> tuple[bool, bool]:
    n = bodies.integer(body, "n", lo=1, hi=128)
    if n is not None and n != 1:
        raise bad_request("only n=1 is supported", param="n", code="unsupported_parameter")
    temperature = bodies.number(body, "temperature", lo=0, hi=2)
    if temperature is not None:
        text.temperature = temperature
    top_p = bodies.number(body, "top_p", lo=0, hi=1, lo_open=True)
    if top_p is not None:
        text.top_p = top_p
    seed = bodies.integer(body, "seed", lo=SEED_MIN, hi=SEED_MAX)
    if seed is not None:
        text.seed = seed
    text.stop.extend(_stop(body))
    bodies.string(body, "user", max_len=256)
    for name in ("presence_penalty", "frequency_penalty"):
        bodies.number(body, name, lo=-2, hi=2)
        bodies.unsupported(body, name, allowed=(None, 0, 0.0), why="only 0 is supported")
    bodies.unsupported(body, "logit_bias", allowed=(None, {}))
    stream = bool(bodies.boolean(body, "stream"))
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise bad_request("'stream_options' is only allowed when 'stream' is true", param="stream_options")
        if not isinstance(options, dict):
            raise bad_request("'stream_options' must be an object", param="stream_options", code="invalid_type")
        bodies.only(options, {"include_usage", "include_obfuscation"})
        include_usage = bool(bodies.boolean(options, "include_usage"))
    return stream, include_usage


def _max_tokens(body: dict, *names: str) -> int:
    for name in names:
        value = bodies.integer(body, name, lo=1, hi=MAX_TOKENS_MAX)
        if value is not None:
            return value
    return 0  # the scheduler's default


def _content(m: dict, i: int) -> str:
    content = m.get("content")
    param = f"messages[{i}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"{param}[{j}]: only text content parts are supported", param=param,
                                  code="unsupported_content")
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(f"{param} must be a string or a list of text parts", param=param, code="invalid_type")


def _messages(body: dict) -> list[spb.ChatMessage]:
    messages = bodies.required(body, "messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", param="messages", code="invalid_type")
    if len(messages) > MESSAGES_MAX:
        raise bad_request(f"at most {MESSAGES_MAX} messages", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", param=f"messages[{i}]", code="invalid_type")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:  # an object or list is unhashable
            raise bad_request(f"messages[{i}].role must be one of system, developer, user, assistant; "
                              f"got {str(role)[:40]!r}", param=f"messages[{i}].role", code="invalid_role")
        extra = set(m) - {"role", "content", "name"}
        for k in sorted(extra):
            if m[k] not in (None, [], ""):
                raise bad_request(f"messages[{i}].{k} is not supported", param=f"messages[{i}].{k}",
                                  code="unsupported_parameter")
        if "name" in m and m["name"] is not None and not isinstance(m["name"], str):
            raise bad_request(f"messages[{i}].name must be a string", param=f"messages[{i}].name")
        out.append(spb.ChatMessage(role=ROLES[role], content=_content(m, i)))
    return out


def chat(body: dict) -> TextRequest:
    bodies.only(body, CHAT_FIELDS)
    model = _model(body)
    text = spb.TextGeneration(messages=_messages(body))
    text.max_tokens = _max_tokens(body, "max_completion_tokens", "max_tokens")
    stream, include_usage = _common(body, text)
    bodies.unsupported(body, "tools", allowed=(None, []), why="this gateway serves text generation only")
    bodies.unsupported(body, "tool_choice", allowed=(None, "none"))
    bodies.unsupported(body, "functions", allowed=(None, []))
    bodies.unsupported(body, "function_call", allowed=(None, "none"))
    bodies.unsupported(body, "logprobs", allowed=(None, False))
    bodies.unsupported(body, "top_logprobs", allowed=(None, 0))
    bodies.unsupported(body, "response_format", allowed=(None, {"type": "text"}))
    bodies.unsupported(body, "store", allowed=(None, False))
    bodies.unsupported(body, "service_tier", allowed=(None, "auto", "default"))
    bodies.boolean(body, "parallel_tool_calls")
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        raise bad_request("'metadata' must be an object", param="metadata", code="invalid_type")
    return TextRequest(model, text, stream, include_usage, provider_prefs.parse(body.get("provider")))


def completion(body: dict) -> TextRequest:
    bodies.only(body, COMPLETION_FIELDS)
    model = _model(body)
    prompt = bodies.required(body, "prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise bad_request("'prompt' must be a string (or a list of exactly one string)", param="prompt",
                              code="unsupported_parameter")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("'prompt' must be a string", param="prompt", code="invalid_type")
    if not prompt:
        raise bad_request("'prompt' must not be empty", param="prompt")
    text = spb.TextGeneration(prompt=prompt, max_tokens=_max_tokens(body, "max_tokens"))
    stream, include_usage = _common(body, text)
    bodies.unsupported(body, "echo", allowed=(None, False))
    bodies.unsupported(body, "suffix", allowed=(None, ""))
    bodies.unsupported(body, "best_of", allowed=(None, 1))
    bodies.unsupported(body, "logprobs", allowed=(None,))
    return TextRequest(model, text, stream, include_usage, provider_prefs.parse(body.get("provider")))
