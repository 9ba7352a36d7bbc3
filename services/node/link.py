"""The agent's end of the node link: one outbound gRPC stream to a relay
replica that carries every request for this node's Triton.

The node never listens: Triton binds to loopback, and the agent dials out to
the relay (RelayService.Link, with its node token), then serves each Call the
relay sends by calling Triton with the same raw bytes (unary, or a streaming
ModelStreamInfer) and sending its replies back, no more than the call's
window ahead of the caller (Credit), until End. Cancel from the relay, or the
link dropping, cancels the Triton call.

    link = NodeLink(relay_addrs=["relay:50055"], node_id=..., node_token=..., triton_url="127.0.0.1:8001")
    await link.start()           # connects, and reconnects with jittered backoff
    await link.wait_linked()
    ...
    await link.stop()

Link states: DOWN -> (Hello, attached by the relay: first message) -> UP ->
(stream ends) -> DOWN, retried on the next replica after a jittered pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence

import grpc
import structlog

from idlegrid.common.config import Config
from idlegrid.node.link_up import END, FEATURES, end_message, outgoing, reply_message
from idlegrid.relay.v1 import relay_pb2 as pb

log = structlog.get_logger("node.link")

LINK_METHOD = "/idlegrid.relay.v1.RelayService/Link"
KSERVE = "/inference.GRPCInferenceService/"
UNARY_METHODS = frozenset({"ServerLive", "ServerReady", "ModelReady", "ModelMetadata", "ModelConfig", "ModelInfer"})
STREAM_METHODS = frozenset({"ModelStreamInfer"})
AGENT_VERSION = "idlegrid-agent/0.1.0"
MESSAGE_BYTES_MAX = 64 * 1024 * 1024
_OPTIONS = (
    ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
    ("grpc.keepalive_time_ms", 15_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
_TRITON_OPTIONS = (("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
                   ("grpc.max_send_message_length", MESSAGE_BYTES_MAX))


class _NodeCall:
    """One call being served: its task, the credit left and, for a stream,
    its further inputs (a unary call needs neither queue nor event)."""

    __slots__ = ("call_id", "task", "credit", "more", "inputs")

    def __init__(self, call_id: int, window: int, inputs_max: int, *, stream: bool) -> None:
        self.call_id = call_id
        self.task: asyncio.Task | None = None
        self.credit = max(1, window)
        self.more: asyncio.Event | None = asyncio.Event() if stream else None
        self.inputs: asyncio.Queue[bytes | None] | None = asyncio.Queue(inputs_max) if stream else None


class NodeLink:
    def __init__(self, *, relay_addrs: Sequence[str], node_id: bytes, node_token: str, triton_url: str,
                 channel_config: Config | None = None, calls_max: int = 256, inputs_per_call_max: int = 1024,
                 backoff_initial_s: float = 0.2, backoff_max_s: float = 10.0,
                 agent_version: str = AGENT_VERSION, on_change: Callable[[bool], None] | None = None,
                 rng: Callable[[], float] = random.random) -> None:
        """``relay_addrs``: relay replicas, tried in turn (a failed one is
        left for the next). ``calls_max``: calls served at once on the link
        (more fail RESOURCE_EXHAUSTED). ``on_change(linked)``: called on every
        link up and down (the agent reports it); ``changed`` is set too."""
        if not relay_addrs:
            raise ValueError("NodeLink needs at least one relay address")
        self.relay_addrs = list(relay_addrs)
        self.node_id = node_id
        self.node_token = node_token
        self.triton_url = triton_url
        self._config = channel_config
        self.calls_max = calls_max
        self.inputs_per_call_max = inputs_per_call_max
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.agent_version = agent_version
        self._on_change = on_change
        self._rng = rng
        self.linked = False
        self.relay_addr: str | None = None  # the replica holding the link while linked
        self.changed = asyncio.Event()
        self.links_made = 0      # times the link came up
        self.replies_sent = 0
        self.cancelled_calls = 0  # calls cancelled by the relay or a dropped link
        self.waiting_credit = 0   # calls waiting for the caller to consume (flow control)
        self.failures = 0         # link attempts that failed, and the last one's gRPC code
        self.last_error = ""
        self._calls: dict[int, _NodeCall] = {}
        self._out: asyncio.Queue[pb.LinkUp] | None = None
        self._task: asyncio.Task | None = None
        self._triton: grpc.aio.Channel | None = None
        self._rpcs: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}  # Triton's unary methods, made once
        self._reply_last = self._batch_up = False  # what the relay holding the link takes (its Welcome)
        self._stopping = False

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    def set_credentials(self, node_id: bytes, node_token: str) -> None:
        """The agent registered again: the next link uses the new identity."""
        self.node_id, self.node_token = node_id, node_token

    async def start(self) -> None:
        self._stopping = False
        self._triton = grpc.aio.insecure_channel(self.triton_url, options=_TRITON_OPTIONS)
        self._rpcs = {m: self._triton.unary_unary(KSERVE + m) for m in UNARY_METHODS}
        self._task = asyncio.create_task(self._run(), name="node-link")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._triton is not None:
            await self._triton.close()
            self._triton = None
            self._rpcs = {}

    async def wait_linked(self, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not self.linked:
                self.changed.clear()
                await self.changed.wait()

    # ------------------------------------------------------------ the link

    def _set_linked(self, linked: bool, addr: str | None) -> None:
        if linked == self.linked:
            return
        self.linked, self.relay_addr = linked, addr if linked else None
        if linked:
            self.links_made += 1
        log.info("node.link_up" if linked else "node.link_down", relay=addr)
        self.changed.set()
        if self._on_change is not None:
            self._on_change(linked)

    async def _run(self) -> None:
        attempt, index = 0, 0
        while not self._stopping:
            addr = self.relay_addrs[index % len(self.relay_addrs)]
            made = self.links_made
            try:
                await self._session(addr)
            except asyncio.CancelledError:
                raise
            except grpc.RpcError as e:
                self.failures += 1
                self.last_error = e.code().name
                log.warning("node.link_failed", relay=addr, code=e.code().name, details=e.details())
            except Exception as e:  # noqa: BLE001 - any failure: retry on the next replica
                self.failures += 1
                self.last_error = type(e).__name__
                log.warning("node.link_failed", relay=addr, error=repr(e))
            finally:
                self._set_linked(False, None)
                self._cancel_all()
            if self._stopping:
                return
            attempt = 0 if self.links_made > made else attempt + 1
            index += 1
            pause_s = min(self.backoff_max_s, self.backoff_initial_s * 2 ** min(attempt, 30))
            await asyncio.sleep(pause_s * (0.5 + self._rng() / 2))  # jittered: replicas are not stampeded

    def _channel(self, addr: str) -> grpc.aio.Channel:
        if self._config is not None and self._config.tls_ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=self._config.tls_ca.read_bytes())
            return grpc.aio.secure_channel(addr, creds, options=_OPTIONS)
        return grpc.aio.insecure_channel(addr, options=_OPTIONS)

    async def _session(self, addr: str) -> None:
        out: asyncio.Queue[pb.LinkUp] = asyncio.Queue(self.calls_max * 64 + 64)
        out.put_nowait(pb.LinkUp(hello=pb.Hello(node_id=self.node_id, agent_version=self.agent_version[:64],
                                                features=FEATURES)))
        self._out = out
        self._reply_last = self._batch_up = False  # until this relay's Welcome says otherwise
        async with self._channel(addr) as channel:
            link = channel.stream_stream(LINK_METHOD, request_serializer=pb.LinkUp.SerializeToString,
                                         response_deserializer=pb.LinkDown.FromString)
            stream = link(outgoing(out, lambda: self._batch_up),
                          metadata=(("authorization", f"Bearer {self.node_token}"),))
            try:
                async for down in stream:
                    self._set_linked(True, addr)  # the relay speaks only once the registry attached us
                    self._on_down(down)
            finally:
                self._out = None
                while True:  # end the request generator before the call goes
                    try:
                        out.put_nowait(END)
                        break
                    except asyncio.QueueFull:
                        out.get_nowait()
                stream.cancel()

    def _on_down(self, down: pb.LinkDown) -> None:
        kind = down.WhichOneof("event")
        if kind == "call":
            self._begin(down.call)
        elif kind == "input":
            c = self._calls.get(down.input.call_id)
            if c is not None and c.inputs is not None:  # (a unary call takes no inputs)
                try:
                    if down.input.payload:
                        c.inputs.put_nowait(down.input.payload)
                    if down.input.done:
                        c.inputs.put_nowait(None)
                except asyncio.QueueFull:
                    c.task.cancel()
                    self._send_nowait(end_message(c.call_id, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many inputs"))
        elif kind == "credit":
            c = self._calls.get(down.credit.call_id)
            if c is not None and c.more is not None:
                c.credit += down.credit.replies
                c.more.set()
        elif kind == "cancel":
            c = self._calls.get(down.cancel.call_id)
            if c is not None and c.task is not None:
                self.cancelled_calls += 1
                c.task.cancel()
        elif kind == "ping":
            self._send_nowait(pb.LinkUp(pong=pb.Pong(nonce=down.ping.nonce)))
        elif kind == "batch":
            for event in down.batch.events:
                if event.WhichOneof("event") != "batch":
                    self._on_down(event)
        elif kind == "welcome":
            features = down.welcome.features
            self._reply_last, self._batch_up = pb.FEATURE_REPLY_LAST in features, pb.FEATURE_BATCH in features

    def _send_nowait(self, msg: pb.LinkUp) -> None:
        if self._out is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._out.put_nowait(msg)

    async def _send(self, msg: pb.LinkUp) -> None:
        out = self._out
        if out is None:
            raise asyncio.CancelledError  # the link is gone: so is the call
        if out.full():
            await out.put(msg)
        else:
            out.put_nowait(msg)

    def _cancel_all(self) -> None:
        calls, self._calls = self._calls, {}
        for c in calls.values():
            if c.task is not None:
                self.cancelled_calls += 1
                c.task.cancel()

    # ------------------------------------------------------------ calls

    def _begin(self, call: pb.Call) -> None:
        method = call.method
        if method not in UNARY_METHODS and method not in STREAM_METHODS:
            self._send_nowait(end_message(call.call_id, grpc.StatusCode.PERMISSION_DENIED, f"{method} is not served"))
            return
        if len(self._calls) >= self.calls_max or call.call_id in self._calls:
            self._send_nowait(end_message(call.call_id, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                          f"the node serves {self.calls_max} calls at once"))
            return
        stream = method in STREAM_METHODS
        c = _NodeCall(call.call_id, call.window, self.inputs_per_call_max, stream=stream)
        if stream and call.input_done:
            c.inputs.put_nowait(None)
        self._calls[call.call_id] = c
        c.task = asyncio.create_task(self._serve(c, call, stream))

    async def _serve(self, c: _NodeCall, call: pb.Call, stream: bool) -> None:
        try:
            if stream:
                await self._stream(c, call)
            else:
                reply = await self._rpcs[call.method](call.payload, timeout=self._timeout_s(call))
                if self._reply_last:  # one message: the reply ends the call
                    self.replies_sent += 1
                    await self._send(reply_message(c.call_id, reply, last=True))
                    return
                await self._reply(c, reply)
            await self._send(end_message(c.call_id, grpc.StatusCode.OK, ""))
        except asyncio.CancelledError:
            pass  # cancelled by the relay, or the link dropped: nobody waits for an End
        except grpc.aio.AioRpcError as e:
            with contextlib.suppress(asyncio.CancelledError):
                await self._send(end_message(c.call_id, e.code(), e.details() or ""))
        except Exception as e:  # noqa: BLE001 - the caller gets INTERNAL, never a trace
            log.error("node.link_call_failed", exc_info=e)
            with contextlib.suppress(asyncio.CancelledError):
                await self._send(end_message(c.call_id, grpc.StatusCode.INTERNAL, "the node failed the call"))
        finally:
            if self._calls.get(c.call_id) is c:
                del self._calls[c.call_id]

    @staticmethod
    def _timeout_s(call: pb.Call) -> float | None:
        return call.timeout_ms / 1000 if call.timeout_ms else None

    async def _stream(self, c: _NodeCall, call: pb.Call) -> None:
        async def requests():
            yield call.payload
            while (payload := await c.inputs.get()) is not None:
                yield payload

        rpc = self._triton.stream_stream(KSERVE + call.method)(requests(), timeout=self._timeout_s(call))
        try:
            async for reply in rpc:
                await self._reply(c, reply)
        finally:
            rpc.cancel()  # a no-op when done; cancels Triton's request otherwise

    async def _reply(self, c: _NodeCall, payload: bytes) -> None:
        if c.credit <= 0:  # flow control: wait for the caller to consume
            self.waiting_credit += 1
            try:
                while c.credit <= 0:
                    c.more.clear()
                    await c.more.wait()
            finally:
                self.waiting_credit -= 1
        c.credit -= 1
        self.replies_sent += 1
        await self._send(reply_message(c.call_id, payload))
