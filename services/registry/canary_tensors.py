"""Tensor canaries of the catalog: a KServe v2 JSON infer body
(``kserve_request_json``) and the outputs it must produce
(``kserve_expected_json``), parsed into arrays and compared within the
catalog's absolute tolerance.

    {"inputs":  [{"name": "INPUT0",  "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    {"outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}

``data`` may be flat or nested (row-major); BYTES elements are strings and
compare exactly, every other type within the tolerance (NaN equals NaN).
A malformed body is a ValueError naming what is wrong (INVALID_ARGUMENT at
PutCatalogModel)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from tritonclient.utils import triton_to_np_dtype

TENSORS_MAX = 16
DIMS_MAX = 8
ELEMENTS_MAX = 65_536
DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES")


@dataclass(frozen=True, slots=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    value: np.ndarray


def _flat(data) -> list:
    out, stack = [], [data]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        else:
            out.append(v)
    return out


def _tensor(raw, where: str) -> Tensor:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object")
    name, datatype, shape, data = raw.get("name"), raw.get("datatype"), raw.get("shape"), raw.get("data")
    if not isinstance(name, str) or not 1 <= len(name) <= 128:
        raise ValueError(f"{where}.name must be a string of 1..128 chars")
    if datatype not in DATATYPES:
        raise ValueError(f"{where}.datatype must be one of {', '.join(DATATYPES)}")
    if (not isinstance(shape, list) or len(shape) > DIMS_MAX
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= ELEMENTS_MAX for d in shape)):
        raise ValueError(f"{where}.shape must be a list of at most {DIMS_MAX} non-negative integers")
    count = math.prod(shape)
    values = _flat(data if data is not None else [])
    if count > ELEMENTS_MAX or len(values) != count:
        raise ValueError(f"{where}: shape {shape} holds {count} elements, data has {len(values)} "
                         f"(at most {ELEMENTS_MAX})")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise ValueError(f"{where}.data: BYTES elements are strings")
        value = np.array([v.encode() for v in values], dtype=np.object_).reshape(shape)
    else:
        kind = bool if datatype == "BOOL" else (int if datatype[0] in "UI" else (int, float))
        if not all(isinstance(v, kind) and (datatype == "BOOL" or not isinstance(v, bool)) for v in values):
            raise ValueError(f"{where}.data: {datatype} elements must be {'booleans' if kind is bool else 'numbers'}")
        try:
            value = np.array(values, dtype=triton_to_np_dtype(datatype)).reshape(shape)
        except (OverflowError, ValueError):
            raise ValueError(f"{where}.data does not fit {datatype}") from None
    return Tensor(name, datatype, tuple(shape), value)


def _tensors(text: str, key: str, what: str) -> list[Tensor]:
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError(f"{what} is not valid JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get(key), list) or not 1 <= len(body[key]) <= TENSORS_MAX:
        raise ValueError(f"{what} must be a JSON object with {key!r}: a list of 1..{TENSORS_MAX} tensors")
    tensors = [_tensor(t, f"{what}.{key}[{i}]") for i, t in enumerate(body[key])]
    if len({t.name for t in tensors}) != len(tensors):
        raise ValueError(f"{what}: a tensor name appears twice")
    return tensors


def request(text: str) -> list[Tensor]:
    return _tensors(text, "inputs", "kserve_request_json")


def expected(text: str) -> list[Tensor]:
    return _tensors(text, "outputs", "kserve_expected_json")


def mismatch(want: list[Tensor], got: dict[str, np.ndarray], tolerance: float) -> str | None:
    """Why ``got`` (output name → array) is not ``want``, or None."""
    for t in want:
        g = got.get(t.name)
        if g is None:
            return f"output {t.name!r} is missing"
        if tuple(g.shape) != t.shape:
            return f"output {t.name!r} has shape {list(g.shape)}, the reference {list(t.shape)}"
        if t.datatype == "BYTES":
            same = [bytes(a) if not isinstance(a, bytes) else a for a in g.reshape(-1)] == list(t.value.reshape(-1))
            if not same:
                return f"output {t.name!r} differs from the reference"
            continue
        try:
            close = np.allclose(g.astype(np.float64), t.value.astype(np.float64), rtol=0.0, atol=tolerance,
                                equal_nan=True)
        except (TypeError, ValueError):
            close = False
        if not close:
            return f"output {t.name!r} differs from the reference by more than {tolerance:g}"
    return None
