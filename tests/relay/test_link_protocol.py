"""The link protocol across versions: a unary success is one message
(Reply with ``last``) between a relay and an agent that both understand it,
and the two-message form (Reply, then End) still works both ways: the relay
accepts it from an older agent, and the agent uses it with an older relay
(one whose first message is a Ping, not a Welcome listing the feature).
Batches (several events in one message) go only to a side that listed
FEATURE_BATCH, and many concurrent calls through a real link all come back."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import tritonclient.grpc.aio as tc
from tritonclient.grpc import service_pb2 as kpb

from idlegrid.common.auth import bearer
from idlegrid.node.link import NodeLink
from idlegrid.relay.v1 import relay_pb2 as pb
from idlegrid.relay.v1 import relay_pb2_grpc
from tests.harness.polling import eventually
from tests.relay import support
from tests.relay.support import headers

pytestmark = pytest.mark.slow

LINK_METHOD = "/idlegrid.relay.v1.RelayService/Link"


class RawAgent:
    """An agent end driven by hand: it answers ServerLive with a reply that
    ends the call in the form the test picks, and fails anything else (the
    registry's verification calls)."""

    def __init__(self, channel: grpc.aio.Channel, node_id: bytes, token: str) -> None:
        self.node_id = node_id
        self.form = "last"  # "last": one message; "end": Reply, then End; "batch": both in one UpBatch
        self.served: list[str] = []
        self._out: asyncio.Queue[pb.LinkUp | None] = asyncio.Queue(64)
        self._out.put_nowait(pb.LinkUp(hello=pb.Hello(node_id=node_id, agent_version="raw-test-agent")))
        method = channel.stream_stream(LINK_METHOD, request_serializer=pb.LinkUp.SerializeToString,
                                       response_deserializer=pb.LinkDown.FromString)
        self.call = method(self._requests(), metadata=bearer(token))

    async def _requests(self):
        while (msg := await self._out.get()) is not None:
            yield msg

    async def serve(self) -> None:
        while (down := await self.call.read()) is not grpc.aio.EOF:  # (the test read the first one)
            kind = down.WhichOneof("event")
            if kind == "ping":
                self._out.put_nowait(pb.LinkUp(pong=pb.Pong(nonce=down.ping.nonce)))
            elif kind == "call" and down.call.method == "ServerLive":
                payload = kpb.ServerLiveResponse(live=True).SerializeToString()
                call_id = down.call.call_id
                reply = pb.LinkUp(reply=pb.Reply(call_id=call_id, payload=payload, last=self.form == "last"))
                end = pb.LinkUp(end=pb.End(call_id=call_id, code=0))
                if self.form == "batch":
                    self._out.put_nowait(pb.LinkUp(batch=pb.UpBatch(events=[reply, end])))
                else:
                    self._out.put_nowait(reply)
                if self.form == "end":
                    self._out.put_nowait(end)
                self.served.append(self.form)
            elif kind == "call":
                self._out.put_nowait(pb.LinkUp(end=pb.End(call_id=down.call.call_id, code=14, message="raw agent")))

    def close(self) -> None:
        self._out.put_nowait(None)
        self.call.cancel()


async def test_the_relay_takes_a_unary_reply_in_one_message_or_in_two(relay, registry):
    node_id, token = await registry.node()
    async with grpc.aio.insecure_channel(support.relay_addr(relay)) as ch:
        agent = RawAgent(ch, node_id, token)
        first = await agent.call.read()
        assert first.WhichOneof("event") == "welcome"
        assert {pb.FEATURE_REPLY_LAST, pb.FEATURE_BATCH} <= set(first.welcome.features)
        serving = asyncio.create_task(agent.serve())
        try:
            async with tc.InferenceServerClient(url=support.relay_addr(relay)) as c:
                for form in ("last", "end", "batch", "last"):
                    agent.form = form
                    assert await c.is_server_live(headers=headers(node_id))
            assert agent.served == ["last", "end", "batch", "last"]
            # Either way the call is over on the relay: nothing waits for an End.
            await eventually(lambda: not relay.hub.get(node_id).calls, what="the relay to forget the calls")
        finally:
            agent.close()
            serving.cancel()


class ScriptedRelay(relay_pb2_grpc.RelayServiceServicer):
    """A relay that sends one ServerLive call down the link and records what
    the agent sends back for it; ``welcome``: whether its first message is a
    Welcome listing FEATURE_REPLY_LAST (a relay that knows the feature; it
    sends the call in a DownBatch, as the agent's Hello allows) or a Ping
    (an older relay)."""

    def __init__(self, *, welcome: bool) -> None:
        self.welcome = welcome
        self.hello: pb.Hello | None = None
        self.up: list[pb.LinkUp] = []
        self.done = asyncio.Event()

    async def Link(self, request_iterator, context):  # noqa: N802 - gRPC method name
        self.hello = (await anext(request_iterator)).hello
        call = pb.LinkDown(call=pb.Call(call_id=1, method="ServerLive", payload=b"", window=1, input_done=True))
        if self.welcome:
            yield pb.LinkDown(welcome=pb.Welcome(features=[pb.FEATURE_REPLY_LAST]))
            assert pb.FEATURE_BATCH in self.hello.features
            yield pb.LinkDown(batch=pb.DownBatch(events=[pb.LinkDown(ping=pb.Ping(nonce=1)), call]))
        else:
            yield pb.LinkDown(ping=pb.Ping(nonce=0))
            yield call
        async for up in request_iterator:
            if up.WhichOneof("event") in ("reply", "end"):
                self.up.append(up)
                if up.WhichOneof("event") == "end" or up.reply.last:
                    break
        # Whatever the agent queued after its reply comes before the Pong to this Ping.
        yield pb.LinkDown(ping=pb.Ping(nonce=7))
        async for up in request_iterator:
            if up.WhichOneof("event") != "pong":
                self.up.append(up)
            elif up.pong.nonce == 7:
                break
        self.done.set()
        await asyncio.Event().wait()  # hold the link until the agent stops


@pytest.mark.parametrize("welcome", [True, False], ids=["relay-knows-reply-last", "older-relay"])
async def test_the_agent_ends_a_unary_call_in_one_message_only_when_the_relay_understands_it(triton, welcome):
    relay = ScriptedRelay(welcome=welcome)
    server = grpc.aio.server()
    relay_pb2_grpc.add_RelayServiceServicer_to_server(relay, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    link = NodeLink(relay_addrs=[f"127.0.0.1:{port}"], node_id=b"\x01" * 16, node_token="t",
                    triton_url=triton.grpc_url)
    await link.start()
    try:
        await asyncio.wait_for(relay.done.wait(), 30)
    finally:
        await link.stop()
        await server.stop(0)
    kinds = [(m.WhichOneof("event"), m.reply.last if m.HasField("reply") else None) for m in relay.up]
    if welcome:
        assert kinds == [("reply", True)]
    else:
        assert kinds == [("reply", False), ("end", None)] and relay.up[1].end.code == 0
    assert kpb.ServerLiveResponse.FromString(relay.up[0].reply.payload).live


async def test_many_concurrent_calls_through_a_real_link_all_come_back(relay, node):
    """Calls at once: the relay and the agent send what queued up as batches;
    each caller still gets its own answer."""
    async with support.client(relay) as c:
        results = await asyncio.gather(*(
            c.infer(support.ECHO_MODEL_NAME, support.echo_inputs([float(i), 1.0]), headers=headers(node.node_id))
            for i in range(64)))
    for i, r in enumerate(results):
        assert r.as_numpy("OUTPUT0").tolist() == [[float(i), 1.0]]
    assert not relay.hub.get(node.node_id).calls
