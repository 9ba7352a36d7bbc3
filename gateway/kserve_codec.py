"""KServe v2 inference bodies, JSON and with Triton's binary tensor data
extension, to and from the scheduler's tensors (raw little-endian contents;
BYTES as Triton's 4-byte-length-prefixed elements).

Binary extension: the ``Inference-Header-Content-Length`` header gives the
size of the JSON part; the tensors follow, one per input whose
``parameters.binary_data_size`` is set, in input order. Outputs are binary
when the request says so (``outputs[].parameters.binary_data`` or the
request's ``parameters.binary_data_output``), as ``tritonclient.http`` asks
by default."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

from idlegrid.gateway.bodies import parse_object
from idlegrid.gateway.errors import bad_request
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

HEADER_LENGTH = "inference-header-content-length"
TENSORS_MAX = 64
DIMS_MAX = 16
ELEMENTS_MAX = 1 << 28
_DTYPES = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_BINARY_ONLY = {"BF16": 2}
_REQUEST_FIELDS = {"id", "parameters", "inputs", "outputs"}
_INPUT_FIELDS = {"name", "shape", "datatype", "parameters", "data"}
_JSON = json.JSONEncoder(separators=(",", ":"))  # one encoder, not one per response


@dataclass(slots=True)
class InferBody:
    request_id: str
    inputs: list[spb.Tensor]
    outputs: list[str]          # requested outputs; empty = all
    binary: set[str]            # outputs to return as binary
    binary_all: bool            # every output binary (request parameters.binary_data_output)


def pack_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def unpack_bytes(buf: bytes) -> list[bytes]:
    out, i, n = [], 0, len(buf)
    while i < n:
        if i + 4 > n:
            raise ValueError("truncated BYTES element length")
        (size,) = struct.unpack_from("<I", buf, i)
        i += 4
        if i + size > n:
            raise ValueError("truncated BYTES element")
        out.append(bytes(buf[i:i + size]))
        i += size
    return out


def _flatten(data) -> list:
    if not isinstance(data, list):
        return [data]
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _shape(t: dict, param: str) -> list[int]:
    shape = t.get("shape")
    if not isinstance(shape, list) or len(shape) > DIMS_MAX or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise bad_request(f"{param}.shape must be a list of at most {DIMS_MAX} non-negative integers", param=param)
    if math.prod(shape) > ELEMENTS_MAX:
        raise bad_request(f"{param} has more than {ELEMENTS_MAX} elements", param=param)
    return shape


def _json_values(data) -> tuple[list, set[type]]:
    """The flat list of a tensor's JSON ``data`` and the types in it (JSON
    values have exact types: a bool is never taken for an int)."""
    if not isinstance(data, list):
        return [data], {type(data)}
    types = set(map(type, data))
    if list in types:  # nested: flatten row-major
        data = _flatten(data)
        types = set(map(type, data))
    return data, types


_FLOAT_TYPES = frozenset({int, float})
_INT_TYPES = frozenset({int})
_BOOL_TYPES = frozenset({bool})
_STR_TYPES = frozenset({str})


def _json_contents(t: dict, datatype: str, count: int, param: str) -> bytes:
    data, types = _json_values(t.get("data"))
    if len(data) != count:
        raise bad_request(f"{param}: 'data' has {len(data)} elements, the shape needs {count}", param=param)
    if datatype == "BYTES":
        if not types <= _STR_TYPES:
            raise bad_request(f"{param}: BYTES data must be strings", param=param)
        return pack_bytes([x.encode() for x in data])
    if datatype in _BINARY_ONLY:
        raise bad_request(f"{param}: {datatype} tensors must be sent as binary data", param=param)
    dtype = _DTYPES[datatype]
    if datatype == "BOOL":
        ok = types <= _BOOL_TYPES
    elif dtype.kind == "f":
        ok = types <= _FLOAT_TYPES
    else:
        info = np.iinfo(dtype)
        ok = types <= _INT_TYPES and (not data or info.min <= min(data) and max(data) <= info.max)
    if not ok:
        raise bad_request(f"{param}: 'data' does not hold {datatype} values (or one is out of range)",
                          param=param)
    try:
        arr = np.array(data, dtype=dtype)
    except (OverflowError, ValueError):
        raise bad_request(f"{param}: a value does not fit {datatype}", param=param) from None
    return arr.tobytes()


def decode_request(raw: bytes, header_length: str | None) -> InferBody:
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise bad_request("Inference-Header-Content-Length is not a number") from None
        if not 0 < n <= len(raw):
            raise bad_request("Inference-Header-Content-Length is larger than the body")
        head, binary = raw[:n], memoryview(raw)[n:]
    else:
        head, binary = raw, memoryview(b"")
    body = parse_object(bytes(head), what="the inference request")
    unknown = sorted(set(body) - _REQUEST_FIELDS)
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}", param=unknown[0])
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad_request("'parameters' must be an object", param="parameters")
    if any(k.startswith("sequence_") for k in params):
        raise bad_request("sequence (stateful) requests are not supported", param="parameters")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= TENSORS_MAX:
        raise bad_request(f"'inputs' must be a list of 1..{TENSORS_MAX} tensors", param="inputs")
    tensors, offset = [], 0
    for i, t in enumerate(inputs):
        param = f"inputs[{i}]"
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
            raise bad_request(f"{param} must be an object with a name", param=param)
        extra = sorted(set(t) - _INPUT_FIELDS)
        if extra:
            raise bad_request(f"{param}: unknown field {extra[0]!r}", param=param)
        datatype = t.get("datatype")
        if not isinstance(datatype, str) or datatype not in _DTYPES and datatype not in ("BYTES", *_BINARY_ONLY):
            raise bad_request(f"{param}.datatype {str(datatype)[:20]!r} is not a KServe v2 datatype", param=param)
        shape = _shape(t, param)
        count = math.prod(shape)
        tparams = t.get("parameters") or {}
        if not isinstance(tparams, dict):
            raise bad_request(f"{param}.parameters must be an object", param=param)
        size = tparams.get("binary_data_size")
        if size is not None:
            if "data" in t:
                raise bad_request(f"{param} has both 'data' and binary data", param=param)
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise bad_request(f"{param}.parameters.binary_data_size does not fit the body", param=param)
            contents = bytes(binary[offset:offset + size])
            offset += size
            itemsize = _DTYPES[datatype].itemsize if datatype in _DTYPES else _BINARY_ONLY.get(datatype)
            if itemsize is not None and size != count * itemsize:
                raise bad_request(f"{param}: {size} bytes of binary data, the shape needs {count * itemsize}",
                                  param=param)
            if datatype == "BYTES":
                try:
                    if len(unpack_bytes(contents)) != count:
                        raise ValueError
                except ValueError:
                    raise bad_request(f"{param}: BYTES binary data does not hold {count} elements",
                                      param=param) from None
        else:
            if "data" not in t:
                raise bad_request(f"{param} needs 'data' or parameters.binary_data_size", param=param)
            contents = _json_contents(t, datatype, count, param)
        tensors.append(spb.Tensor(name=t["name"], datatype=datatype, shape=shape, contents=contents))
    if offset != len(binary):
        raise bad_request("the body holds more binary data than the inputs declare")
    outputs, binary_out = [], set()
    requested = body.get("outputs") or []
    if not isinstance(requested, list) or len(requested) > TENSORS_MAX:
        raise bad_request(f"'outputs' must be a list of at most {TENSORS_MAX}", param="outputs")
    for i, o in enumerate(requested):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str) or not o["name"]:
            raise bad_request(f"outputs[{i}] must be an object with a name", param=f"outputs[{i}]")
        oparams = o.get("parameters") or {}
        if not isinstance(oparams, dict):
            raise bad_request(f"outputs[{i}].parameters must be an object", param=f"outputs[{i}]")
        if oparams.get("classification"):
            raise bad_request("the classification extension is not supported", param=f"outputs[{i}]")
        outputs.append(o["name"])
        if oparams.get("binary_data"):
            binary_out.add(o["name"])
    request_id = body.get("id", "")
    if not isinstance(request_id, str) or len(request_id) > 128:
        raise bad_request("'id' must be a string of at most 128 characters", param="id")
    return InferBody(request_id, tensors, outputs, binary_out, bool(params.get("binary_data_output")))


def _json_data(t: spb.Tensor) -> list | None:
    """The tensor as a flat JSON list, or None when it cannot be JSON (then binary)."""
    if t.datatype == "BYTES":
        try:
            return [x.decode() for x in unpack_bytes(t.contents)]
        except (ValueError, UnicodeDecodeError):
            return None
    dtype = _DTYPES.get(t.datatype)
    if dtype is None or len(t.contents) % dtype.itemsize:
        return None
    return np.frombuffer(t.contents, dtype=dtype).tolist()


def encode_response(model: str, version: str, body: InferBody, outputs: list[spb.Tensor]) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when there is no binary part)."""
    out_json, blobs = [], []
    for t in outputs:
        entry: dict = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        data = None if (body.binary_all or t.name in body.binary) else _json_data(t)
        if data is None:
            entry["parameters"] = {"binary_data_size": len(t.contents)}
            blobs.append(t.contents)
        else:
            entry["data"] = data
        out_json.append(entry)
    doc = {"model_name": model, "model_version": version, "outputs": out_json}
    if body.request_id:
        doc["id"] = body.request_id
    head = _JSON.encode(doc).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
