"""The ``sampling_parameters`` JSON of a generate request, parsed and bounded.

It follows the Triton vLLM backend: a JSON object whose values may be JSON
numbers or numeric strings (``{"max_tokens": "16"}`` is accepted, as vLLM
accepts it). Defaults are vLLM's. Unknown keys are rejected with their names,
so that a parameter this node cannot honour never changes the output silently.

| key | default | bounds |
|---|---|---|
| max_tokens | 16 | 1 .. 4096 (and what the context window leaves) |
| temperature | 1.0 | 0 .. 2 (0 = greedy) |
| top_p | 1.0 | (0, 1] |
| top_k | -1 | -1 (off) or 1 .. 1000 |
| min_p | 0.0 | 0 .. 1 |
| presence_penalty | 0.0 | -2 .. 2 |
| frequency_penalty | 0.0 | -2 .. 2 |
| repetition_penalty | 1.0 | (0, 2] |
| seed | random | 0 .. 2**32-1 |
| stop | none | a string or up to 4 strings of 1 .. 64 characters |
| n | 1 | only 1 |
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from idlegrid.common.errors import InvalidArgument

MAX_TOKENS_MAX = 4096
STOP_COUNT_MAX = 4
STOP_CHARS_MAX = 64
SEED_MAX = 2**32 - 1
PARAMS_BYTES_MAX = 16 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams)) | {"n"}


def _number(raw: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool):
        raise InvalidArgument(f"sampling_parameters.{key} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"sampling_parameters.{key} must be a number, got {value!r}"
        ) from None
    if not lo <= number <= hi:
        raise InvalidArgument(f"sampling_parameters.{key} must be in [{lo}, {hi}], got {value!r}")
    return number


def _integer(raw: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    number = _number(raw, key, default, lo, hi)
    if number != int(number):
        raise InvalidArgument(f"sampling_parameters.{key} must be an integer, got {raw[key]!r}")
    return int(number)


def _stop(raw: Mapping[str, Any]) -> tuple[str, ...]:
    value = raw.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > STOP_COUNT_MAX
        or not all(isinstance(s, str) and 1 <= len(s) <= STOP_CHARS_MAX for s in stops)
    ):
        raise InvalidArgument(
            f"sampling_parameters.stop must be a string or a list of at most {STOP_COUNT_MAX} "
            f"strings of 1..{STOP_CHARS_MAX} characters"
        )
    return tuple(stops)


def parse_sampling_params(text: str | bytes | None) -> SamplingParams:
    """Parses the JSON object; an empty or missing value gives the defaults."""
    if text is None or len(text) == 0:
        return SamplingParams()
    if len(text) > PARAMS_BYTES_MAX:
        raise InvalidArgument(f"sampling_parameters is larger than {PARAMS_BYTES_MAX} bytes")
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"sampling_parameters is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument("sampling_parameters must be a JSON object")
    unknown = sorted(raw.keys() - _FIELDS)
    if unknown:
        raise InvalidArgument(
            f"unsupported sampling_parameters: {', '.join(unknown)} "
            f"(supported: {', '.join(sorted(_FIELDS))})"
        )
    _integer(raw, "n", 1, 1, 1)
    top_k = _integer(raw, "top_k", -1, -1, 1000)
    if top_k == 0:
        raise InvalidArgument("sampling_parameters.top_k must be -1 (off) or at least 1")
    top_p = _number(raw, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise InvalidArgument("sampling_parameters.top_p must be greater than 0")
    repetition_penalty = _number(raw, "repetition_penalty", 1.0, 0.0, 2.0)
    if repetition_penalty == 0.0:
        raise InvalidArgument("sampling_parameters.repetition_penalty must be greater than 0")
    seed = raw.get("seed")
    return SamplingParams(
        max_tokens=_integer(raw, "max_tokens", 16, 1, MAX_TOKENS_MAX),
        temperature=_number(raw, "temperature", 1.0, 0.0, 2.0),
        top_p=top_p,
        top_k=top_k,
        min_p=_number(raw, "min_p", 0.0, 0.0, 1.0),
        presence_penalty=_number(raw, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(raw, "frequency_penalty", 0.0, -2.0, 2.0),
        repetition_penalty=repetition_penalty,
        seed=None if seed is None else _integer(raw, "seed", 0, 0, SEED_MAX),
        stop=_stop(raw),
    )
