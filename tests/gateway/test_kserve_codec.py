"""The KServe v2 body codec on its own: JSON and binary tensors in, JSON and
binary tensors out, and a clear 400 for every malformed body."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idlegrid.gateway.errors import ApiError
from idlegrid.gateway.kserve_codec import decode_request, encode_response, pack_bytes, unpack_bytes
from idlegrid.scheduler.v1 import scheduler_pb2 as spb


def _binary(head: dict, *blobs: bytes) -> tuple[bytes, str]:
    h = json.dumps(head).encode()
    return h + b"".join(blobs), str(len(h))


def test_binary_inputs_are_split_in_order_and_bytes_keep_their_length_prefixes():
    floats = np.arange(4, dtype=np.float32)
    strings = pack_bytes([b"ab", b"", b"xyz"])
    raw, n = _binary({"inputs": [
        {"name": "A", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
        {"name": "B", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": len(strings)}}]},
        floats.tobytes(), strings)
    body = decode_request(raw, n)
    assert [t.name for t in body.inputs] == ["A", "B"]
    assert body.inputs[0].contents == floats.tobytes()
    assert unpack_bytes(body.inputs[1].contents) == [b"ab", b"", b"xyz"]


def test_json_inputs_become_little_endian_contents():
    body = decode_request(json.dumps({"inputs": [
        {"name": "I", "shape": [2, 2], "datatype": "INT64", "data": [[1, -2], [3, 4]]},
        {"name": "S", "shape": [1], "datatype": "BYTES", "data": ["héllo"]},
        {"name": "B", "shape": [2], "datatype": "BOOL", "data": [True, False]}]}).encode(), None)
    assert np.frombuffer(body.inputs[0].contents, "<i8").tolist() == [1, -2, 3, 4]
    assert unpack_bytes(body.inputs[1].contents) == ["héllo".encode()]
    assert body.inputs[2].contents == b"\x01\x00"


def test_outputs_are_binary_only_when_asked():
    body = decode_request(json.dumps({"inputs": [{"name": "I", "shape": [1], "datatype": "FP32", "data": [1]}],
                                      "outputs": [{"name": "A", "parameters": {"binary_data": True}},
                                                  {"name": "B"}]}).encode(), None)
    a = spb.Tensor(name="A", datatype="FP32", shape=[2], contents=np.array([1, 2], "<f4").tobytes())
    b = spb.Tensor(name="B", datatype="BYTES", shape=[1], contents=pack_bytes([b"ok"]))
    content, n = encode_response("m", "", body, [a, b])
    head = json.loads(content[:n])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 8} and content[n:] == a.contents
    assert head["outputs"][1]["data"] == ["ok"]


@pytest.mark.parametrize("body, header", [
    (b"not json", None),
    (b"[]", None),
    (json.dumps({"inputs": []}).encode(), None),
    (json.dumps({"inputs": [{"name": "I", "shape": [2], "datatype": "FP32", "data": [1]}]}).encode(), None),
    (json.dumps({"inputs": [{"name": "I", "shape": [1], "datatype": "FLOAT", "data": [1]}]}).encode(), None),
    (json.dumps({"inputs": [{"name": "I", "shape": [-1], "datatype": "FP32", "data": [1]}]}).encode(), None),
    (json.dumps({"inputs": [{"name": "I", "shape": [1], "datatype": "INT8", "data": [1000]}]}).encode(), None),
    (json.dumps({"inputs": [{"name": "I", "shape": [1], "datatype": "FP32", "data": ["x"]}]}).encode(), None),
    (json.dumps({"inputs": [{"name": "I", "shape": [1], "datatype": "FP32"}]}).encode(), None),
    (json.dumps({"inputs": [{"name": "I", "shape": [1], "datatype": "FP32", "data": [1]}], "x": 1}).encode(), None),
    (json.dumps({"inputs": [{"name": "I", "shape": [1], "datatype": "FP32", "data": [1]}],
                 "outputs": [{"name": "O", "parameters": {"classification": 3}}]}).encode(), None),
    (*_binary({"inputs": [{"name": "I", "shape": [2], "datatype": "FP32",
                           "parameters": {"binary_data_size": 4}}]}, b"\x00" * 4),),
    (*_binary({"inputs": [{"name": "I", "shape": [1], "datatype": "FP32",
                           "parameters": {"binary_data_size": 4}}]}, b"\x00" * 8),),
    (*_binary({"inputs": [{"name": "I", "shape": [1], "datatype": "BYTES",
                           "parameters": {"binary_data_size": 6}}]}, b"\x09\x00\x00\x00ab"),),
    (b'{"inputs": []}', "999"),
])
def test_malformed_bodies_are_400(body, header):
    with pytest.raises(ApiError) as e:
        decode_request(body, header)
    assert e.value.status == 400 and e.value.message


_JSON_SCALARS = st.one_of(st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                          st.floats(min_value=-1e30, max_value=1e30), st.text(max_size=3), st.none())


def _fits(datatype: str, x) -> bool:
    """The per-element rule for JSON tensor data, written out plainly."""
    if datatype == "BYTES":
        return isinstance(x, str)
    if datatype == "BOOL":
        return isinstance(x, bool)
    if isinstance(x, bool):
        return False
    if datatype.startswith("FP"):
        return isinstance(x, int | float)
    info = np.iinfo(np.dtype(datatype.replace("UINT", "uint").replace("INT", "int").lower()))
    return isinstance(x, int) and info.min <= x <= info.max


@settings(max_examples=300, deadline=None)
@given(datatype=st.sampled_from(["BOOL", "INT8", "UINT8", "INT32", "UINT64", "INT64", "FP32", "FP64", "BYTES"]),
       data=st.lists(_JSON_SCALARS, max_size=6), nest=st.booleans())
def test_json_data_is_taken_exactly_when_every_element_fits_the_datatype(datatype, data, nest):
    """The datatype check over a whole tensor accepts what the element-by-element
    rule accepts, no more (a bool is never a number), nested rows included."""
    sent = [data[:2], data[2:]] if nest else data
    raw = json.dumps({"inputs": [{"name": "I", "shape": [len(data)], "datatype": datatype, "data": sent}]}).encode()
    if all(_fits(datatype, x) for x in data):
        contents = decode_request(raw, None).inputs[0].contents
        if datatype == "BYTES":
            assert unpack_bytes(contents) == [x.encode() for x in data]
        else:
            want = np.array(data, dtype=np.dtype("?") if datatype == "BOOL" else
                            {"INT8": "<i1", "UINT8": "<u1", "INT32": "<i4", "UINT64": "<u8", "INT64": "<i8",
                             "FP32": "<f4", "FP64": "<f8"}[datatype])
            assert contents == want.tobytes()
    else:
        with pytest.raises(ApiError) as e:
            decode_request(raw, None)
        assert e.value.status == 400
