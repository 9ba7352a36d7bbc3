"""Parsing of the vLLM-style ``sampling_parameters`` JSON (no server)."""

from __future__ import annotations

import pytest

from idlegrid.common.errors import InvalidArgument
from idlegrid.demo.sampling import SamplingParams, parse_sampling_params


@pytest.mark.parametrize("raw", [None, b"", ""])
def test_missing_or_empty_parameters_give_vllm_defaults(raw: bytes | str | None) -> None:
    assert parse_sampling_params(raw) == SamplingParams(
        max_tokens=16, temperature=1.0, top_p=1.0, top_k=-1, seed=None, stop=()
    )


def test_numbers_may_arrive_as_strings_as_vllm_accepts_them() -> None:
    params = parse_sampling_params(b'{"max_tokens": "8", "temperature": "0.5", "seed": 3}')
    assert (params.max_tokens, params.temperature, params.seed) == (8, 0.5, 3)


def test_a_single_stop_string_becomes_a_tuple() -> None:
    assert parse_sampling_params('{"stop": "\\n"}').stop == ("\n",)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"best_of": 2}', "unsupported sampling_parameters: best_of"),
        ('{"max_tokens": 0}', "max_tokens must be in"),
        ('{"max_tokens": 1.5}', "max_tokens must be an integer"),
        ('{"temperature": -1}', "temperature must be in"),
        ('{"top_p": 0}', "top_p must be greater than 0"),
        ('{"top_k": 0}', "top_k must be -1"),
        ('{"n": 2}', "n must be in"),
        ('{"stop": ["a", "b", "c", "d", "e"]}', "stop must be"),
        ('{"max_tokens": true}', "max_tokens must be a number"),
        ("[1]", "must be a JSON object"),
        ("{", "not valid JSON"),
    ],
)
def test_out_of_bounds_or_unknown_parameters_are_rejected(raw: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_sampling_params(raw)
