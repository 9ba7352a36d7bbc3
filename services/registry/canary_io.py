"""The inputs of one catalog canary and the check of what came back.

A language model's canary: ``text_input`` is the canary's prompt (raw, no
chat template), ``sampling_parameters`` ``{"max_tokens": N, "temperature":
0}`` (greedy), not streamed, the input excluded from the output; the
``text_output`` must equal the catalog's ``expected_text``. A tensor model's:
the tensors of ``kserve_request_json``; the outputs must match
``kserve_expected_json`` (canary_tensors.py). Inputs the model requires and
the canary does not name are zeros of the smallest shape the metadata
allows."""

from __future__ import annotations

import json

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import triton_to_np_dtype

from idlegrid.registry import canary_tensors
from idlegrid.registry.v1 import registry_pb2 as pb

SHOWN_CHARS_MAX = 300  # of a canary's expected and actual text in a state_detail


class Failed(Exception):
    """A check failed; the message is the node's state_detail."""


def _llm_value(name: str, shape: list[int], c: pb.CatalogCanary) -> np.ndarray | None:
    if name == "text_input":
        return np.array([c.prompt.encode()], dtype=np.object_).reshape(shape)
    if name == "sampling_parameters":
        params = {"max_tokens": c.max_tokens, "temperature": 0}
        return np.array([json.dumps(params).encode()], dtype=np.object_).reshape(shape)
    if name in ("stream", "exclude_input_in_output"):
        return np.full(shape, name == "exclude_input_in_output", dtype=np.bool_)
    return None


def inputs(kind: int, meta, optional: set[str], c: pb.CatalogCanary) -> list[grpcclient.InferInput]:
    named: dict[str, tuple[str, np.ndarray]] = {}
    if kind == pb.MODEL_KIND_TENSOR:
        named = {t.name: (t.datatype, t.value) for t in canary_tensors.request(c.kserve_request_json)}
    out = []
    for t in meta.inputs:
        shape = [1 if d < 0 else d for d in t.shape]
        value = _llm_value(t.name, shape, c) if kind == pb.MODEL_KIND_LLM else None
        datatype = t.datatype
        if t.name in named:
            datatype, value = named.pop(t.name)
        if value is None:
            if t.name in optional:
                continue
            value = _zeros(t.datatype, shape)
        inp = grpcclient.InferInput(t.name, list(value.shape), datatype)
        inp.set_data_from_numpy(value)
        out.append(inp)
    if named:
        raise Failed(f"the catalog's canary names inputs the model does not have: {sorted(named)}")
    return out


def _zeros(datatype: str, shape: list[int]) -> np.ndarray:
    if datatype == "BYTES":
        return np.full(shape, b"0", dtype=np.object_)
    dtype = triton_to_np_dtype(datatype)
    if dtype is None:
        raise Failed(f"cannot build a canary input of Triton type {datatype}")
    return np.zeros(shape, dtype=dtype)


def _text(value: np.ndarray | None) -> str | None:
    if value is None:
        return None
    parts = [v if isinstance(v, bytes) else str(v).encode() for v in value.reshape(-1)]
    return b"".join(parts).decode("utf-8", errors="replace")


def _shown(text: str) -> str:
    return repr(text if len(text) <= SHOWN_CHARS_MAX else text[:SHOWN_CHARS_MAX] + "…")


def mismatch(kind: int, c: pb.CatalogCanary, got: dict[str, np.ndarray]) -> str | None:
    """Why the outputs ``got`` are not the catalog's reference, or None."""
    if kind == pb.MODEL_KIND_LLM:
        text = _text(got.get("text_output"))
        if text is None:
            return "no text_output"
        if text != c.expected_text:
            return (f"greedy output of {c.max_tokens} token(s) was {_shown(text)}, the reference is "
                    f"{_shown(c.expected_text)}")
        return None
    return canary_tensors.mismatch(canary_tensors.expected(c.kserve_expected_json), got, c.tolerance)
