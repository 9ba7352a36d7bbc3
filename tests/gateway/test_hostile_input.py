"""Hostile JSON gets a clear 400, never a 500: bodies nested past what the
parser can recurse into, and strings holding an unpaired UTF-16 surrogate
(valid JSON, but no UTF-8 encoder accepts it further down the path)."""

from __future__ import annotations

import pytest

from idlegrid.gateway.bodies import parse_object
from idlegrid.gateway.errors import ApiError
from idlegrid.gateway.kserve_codec import decode_request

DEEP = b'{"messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
SURROGATES = [
    b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "\\uDFFF"}',
    b'{"x": {"\\udc00key": 1}}',
]


@pytest.mark.parametrize("raw", [DEEP, *SURROGATES])
def test_hostile_json_bodies_are_400(raw):
    with pytest.raises(ApiError) as e:
        parse_object(raw)
    assert e.value.status == 400


@pytest.mark.parametrize("raw", [DEEP, b'{"inputs": [{"name": "\\ud800", "datatype": "FP32", "shape": [1], "data": [1]}]}'])
def test_hostile_kserve_requests_are_400(raw):
    with pytest.raises(ApiError) as e:
        decode_request(raw, None)
    assert e.value.status == 400


def test_a_surrogate_pair_is_a_character_not_an_error():
    assert parse_object(b'{"content": "\\ud83d\\ude00"}') == {"content": "\U0001F600"}
