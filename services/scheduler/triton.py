"""Dispatch to a node's Triton with ``tritonclient.grpc.aio`` over one
persistent channel per address: the relay holding the node's link (the node
named in the call's metadata, with the service token), or an
operator-enabled direct endpoint (see common/node_link.py). Every call also
carries the bound on what the node may send back (bounds.py), enforced here
as the replies arrive.

Language models follow the tensor conventions of Triton's vLLM backend and
are called through the streaming API (they are decoupled): one request per
stream, whose end Triton signals by closing the stream once the request's last
response is sent. Other models are plain KServe v2 infer calls, whose
request is built straight from the caller's tensors (their contents checked
against datatype and shape, then sent as they came: no numpy round trip)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc.aio as tc
from tritonclient.grpc import InferInput, service_pb2
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, triton_to_np_dtype

from idlegrid.common import node_link
from idlegrid.common.auth import AUTH_KEY
from idlegrid.common.errors import InvalidArgument
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler.bounds import BoundExceeded, Meter, ReplyBound
from idlegrid.scheduler.v1 import scheduler_pb2 as spb

CLIENTS_MAX = 4096  # channels held at once: relay replicas plus direct endpoints
_CHANNEL_ARGS = (("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20),
                 ("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_permit_without_calls", 1))


class NodeError(Exception):
    """The node failed the request (connection, error response, bad output)."""


@dataclass(slots=True)
class Piece:
    text: str
    input_tokens: int  # the node's count of prompt tokens (0 = not reported)
    output_tokens: int  # tokens in this piece, as the node reports them
    finish_reason: str | None


class TritonPool:
    """``token``: the service credential the relays ask for (never sent to a
    direct endpoint). ``tls_ca``: a PEM file; relays are reached over TLS
    verified with it when set, against ``tls_name`` (the relays' service
    name: a replica is dialled at its pod address, which no certificate names)."""

    def __init__(self, *, token: str = "", tls_ca: str | None = None, tls_name: str | None = None) -> None:
        self._clients: dict[str, tc.InferenceServerClient] = {}
        self._auth = f"Bearer {token}" if token else ""
        self._tls_ca = tls_ca
        self._tls_name = tls_name

    def client(self, address: str, *, relay: bool = False) -> tc.InferenceServerClient:
        c = self._clients.get(address)
        if c is None:
            if len(self._clients) >= CLIENTS_MAX:
                raise NodeError("too many node connections")
            tls = relay and self._tls_ca is not None
            args = None
            if tls and self._tls_name:
                args = [*_CHANNEL_ARGS, ("grpc.ssl_target_name_override", self._tls_name)]
            c = tc.InferenceServerClient(url=address, ssl=tls, root_certificates=self._tls_ca if tls else None,
                                         channel_args=args)
            self._clients[address] = c
        return c

    def route(self, node: rpb.Node, bound: ReplyBound | None = None) -> tuple[tc.InferenceServerClient, dict]:
        """The client and the headers for a call to ``node``'s Triton."""
        try:
            address, headers = node_link.target(node)
        except node_link.NoRoute as e:
            raise NodeError(str(e)) from None
        relay = node_link.NODE_ID_HEADER in headers
        if relay and self._auth:
            headers[AUTH_KEY] = self._auth
        if bound is not None:
            headers.update(bound.headers())
        return self.client(address, relay=relay), headers

    async def close(self) -> None:
        for c in self._clients.values():
            await c.close()
        self._clients.clear()

    async def generate(self, node: rpb.Node, model: str, version: str, text_input: str,
                       params: dict, *, stream: bool, request_id: str,
                       timeout_s: float, bound: ReplyBound) -> AsyncIterator[Piece]:
        """Yields the generated text piece by piece (one piece when not
        streaming); NodeError once the node sends more than ``bound``."""
        inputs = [_bytes("text_input", text_input.encode()), _bytes("sampling_parameters", json.dumps(params).encode()),
                  _bool("stream", stream), _bool("exclude_input_in_output", True)]
        for flag in ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens"):
            inputs.append(_bool(flag, True))

        async def requests():
            yield {"model_name": model, "model_version": version, "inputs": inputs, "request_id": request_id}

        client, headers = self.route(node, bound)
        meter = Meter(bound)
        it = client.stream_infer(requests(), stream_timeout=timeout_s, headers=headers)
        try:
            async for result, error in it:
                if error is not None:
                    raise NodeError(str(error))
                resp = result.get_response()
                meter.add(resp.ByteSize())
                if resp.outputs:
                    yield _piece(result)
        except BoundExceeded as e:
            raise NodeError(f"cut off: {e}") from None
        except InferenceServerException as e:
            raise NodeError(str(e)) from e
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise  # we are being cancelled (the client left): pass it on
            raise NodeError("the node's stream was cancelled") from None  # the call itself died
        except Exception as e:
            if type(e).__name__ == "AioRpcError":
                raise NodeError(f"{e.code().name}: {e.details()}") from e
            raise
        finally:
            it.cancel()  # a no-op when done; cancels the node's request otherwise

    async def infer(self, node: rpb.Node, model: str, version: str, req: spb.TensorInput, *,
                    request_id: str, timeout_s: float, bound: ReplyBound) -> list[spb.Tensor]:
        request = infer_request(model, version, req, request_id=request_id)
        client, headers = self.route(node, bound)
        try:
            # tritonclient's own stub on the client's channel: its infer() would rebuild this request
            # from numpy arrays, which costs more than the rest of the scheduler's work on a small job.
            resp = await client._client_stub.ModelInfer(request, metadata=tuple(headers.items()), timeout=timeout_s)
        except grpc.RpcError as e:  # worded as tritonclient's infer() words it
            raise NodeError(str(InferenceServerException(msg=e.details(), status=str(e.code()),
                                                         debug_details=e.debug_error_string()))) from e
        try:
            Meter(bound).add(resp.ByteSize())
        except BoundExceeded as e:
            raise NodeError(f"cut off: {e}") from None
        out = []
        for i, o in enumerate(resp.outputs):
            contents = resp.raw_output_contents[i] if i < len(resp.raw_output_contents) else b""
            out.append(spb.Tensor(name=o.name, datatype=o.datatype, shape=list(o.shape), contents=contents))
        return out


def to_numpy(t: spb.Tensor) -> np.ndarray:
    """The tensor's contents as an array; InvalidArgument when they do not fit
    its datatype and shape."""
    from tritonclient.utils import deserialize_bytes_tensor

    dtype = _dtype(t)
    try:
        if t.datatype == "BYTES":
            arr = deserialize_bytes_tensor(t.contents)
        else:
            arr = np.frombuffer(t.contents, dtype=dtype.newbyteorder("<"))
        return arr.reshape(list(t.shape))
    except (ValueError, TypeError) as e:
        raise _mismatch(t) from e


def raw_contents(t: spb.Tensor) -> bytes:
    """The tensor's contents as Triton takes them (the KServe raw little-endian
    layout, BYTES length-prefixed); InvalidArgument where to_numpy refuses them."""
    if t.datatype == "BYTES":
        serialized = serialize_byte_tensor(to_numpy(t))
        return serialized.item() if serialized.size > 0 else b""
    if len(t.contents) != _dtype(t).itemsize * math.prod(t.shape):
        raise _mismatch(t)
    return t.contents


def infer_request(model: str, version: str, req: spb.TensorInput, *,
                  request_id: str) -> service_pb2.ModelInferRequest:
    """The KServe ModelInferRequest of a tensor job (what tritonclient's infer() sends for it)."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for t in req.inputs:
        request.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        request.raw_input_contents.append(raw_contents(t))
    for name in req.outputs:
        request.outputs.add(name=name)
    return request


def _dtype(t: spb.Tensor) -> np.dtype:
    dtype = triton_to_np_dtype(t.datatype)
    if dtype is None:
        raise InvalidArgument(f"tensor {t.name!r}: unknown datatype {t.datatype!r}")
    if any(d < 0 for d in t.shape):
        raise InvalidArgument(f"tensor {t.name!r}: negative dimension")
    return np.dtype(dtype)


def _mismatch(t: spb.Tensor) -> InvalidArgument:
    return InvalidArgument(f"tensor {t.name!r}: contents do not match shape {list(t.shape)}")


def _bytes(name: str, value: bytes) -> InferInput:
    i = InferInput(name, [1], "BYTES")
    i.set_data_from_numpy(np.array([value], dtype=np.object_))
    return i


def _bool(name: str, value: bool) -> InferInput:
    i = InferInput(name, [1], "BOOL")
    i.set_data_from_numpy(np.array([value], dtype=np.bool_))
    return i


def _scalar(result, name: str) -> int:
    a = result.as_numpy(name)
    return int(a.reshape(-1)[0]) if a is not None and a.size else 0


def _piece(result) -> Piece:
    text = result.as_numpy("text_output")
    if text is None:
        raise NodeError("the node's response has no text_output")
    s = b"".join(x if isinstance(x, bytes) else str(x).encode() for x in text.reshape(-1)).decode("utf-8", "replace")
    fr = result.as_numpy("finish_reason")
    reason = None
    if fr is not None and fr.size:
        v = fr.reshape(-1)[0]
        v = v.decode() if isinstance(v, bytes) else str(v)
        reason = None if v in ("", "None") else v
    return Piece(s, _scalar(result, "num_input_tokens"), _scalar(result, "num_output_tokens"), reason)


__all__ = ["NodeError", "Piece", "ReplyBound", "TritonPool", "triton_to_np_dtype"]
