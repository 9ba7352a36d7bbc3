"""Billing on the platform's evidence, in pure parts: the tokenizer comes
from the catalog (Model.tokenizer), never from the node's claimed digest; a
language model the platform cannot count is refused, not billed on the
node's word; token-count disagreements reach the registry off the response
path, bounded; and a node never delivers more text than max_tokens."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from idlegrid.common.errors import Unavailable
from idlegrid.common.node_view import NodeInfo
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler import counting, disagreements, planning
from idlegrid.scheduler.dispatch import Dispatcher, Outcome
from idlegrid.scheduler.routing import Choice
from idlegrid.scheduler.triton import Piece
from tests.scheduler.support import LLM, chat

BOGUS_DIGEST = "sha256:" + "0" * 64


def _model(tokenizer: str, *, name: str = LLM, digest: str = "") -> rpb.Model:
    return rpb.Model(offer=rpb.ModelOffer(name=name, kind=rpb.MODEL_KIND_LLM, weights_digest=digest),
                     verified=True, tokenizer=tokenizer)


def _smollm2_available() -> bool:
    try:
        import llama_cpp  # noqa: F401

        from idlegrid.models.weights import gguf_path
        return gguf_path().exists()
    except ImportError:
        return False


def test_a_catalog_tokenizer_the_platform_lacks_refuses_the_job():
    with pytest.raises(Unavailable) as e:
        counting.platform_counter(_model("no-such-tokenizer"))
    assert e.value.reason == "tokenizer_unavailable"


def test_a_model_from_before_the_catalog_falls_back_to_the_name_and_digest():
    assert counting.platform_counter(_model("", name="unknown-model")) is None  # billed unverified
    assert counting.counter_for(_model("", digest=BOGUS_DIGEST)) is None  # other weights: no guess


@pytest.mark.skipif(not _smollm2_available(), reason="the demo model's tokenizer is not installed")
def test_the_catalog_tokenizer_counts_whatever_digest_the_node_claims():
    counter = counting.platform_counter(_model("smollm2", digest=BOGUS_DIGEST))
    assert counter is not None and counter is counting.counter_for(_model("", digest=""))
    assert counter.text("Hello there, how are you?") > 0


# ------------------------------------------------------------- disagreements

class _Registry:
    """A stand-in for the registry stub: records reports, or fails them."""

    def __init__(self, *, fail: grpc.StatusCode | None = None, gate: asyncio.Event | None = None) -> None:
        self.reports: list[rpb.ReportCheckRequest] = []
        self.calls = 0
        self._fail = fail
        self._gate = gate

    async def ReportCheck(self, req, **call):  # noqa: N802 - the stub's method name
        self.calls += 1
        if self._gate is not None:
            await self._gate.wait()
        if self._fail is not None:
            raise grpc.aio.AioRpcError(self._fail, grpc.aio.Metadata(), grpc.aio.Metadata(), "no")
        self.reports.append(req)
        return rpb.ReportCheckResponse()


async def test_a_disagreement_is_reported_as_a_failed_token_count_check():
    registry = _Registry()
    r = disagreements.DisagreementReporter(registry)
    node, job = os.urandom(16), os.urandom(16)
    r.report(node_id=node, job_id=job, platform=(10, 4), node=(10, 40))
    await r.drain()
    [req] = registry.reports
    assert (req.node_id, req.job_id, req.kind, req.passed) == (node, job, rpb.CHECK_KIND_TOKEN_COUNT, False)
    assert "4 completion" in req.detail and "40" in req.detail and len(req.detail) <= 1024


async def test_a_failing_registry_is_logged_never_raised_and_retried_only_when_unavailable():
    refused = _Registry(fail=grpc.StatusCode.PERMISSION_DENIED)
    r = disagreements.DisagreementReporter(refused)
    r.report(node_id=os.urandom(16), job_id=os.urandom(16), platform=(1, 1), node=(9, 9))
    await r.drain()
    assert refused.calls == 1 and r.in_flight == 0
    down = _Registry(fail=grpc.StatusCode.UNAVAILABLE)
    r = disagreements.DisagreementReporter(down)
    r.report(node_id=os.urandom(16), job_id=os.urandom(16), platform=(1, 1), node=(9, 9))
    await r.drain()
    assert down.calls == disagreements.TRIES and r.in_flight == 0


async def test_reports_under_way_are_bounded_and_the_rest_dropped():
    gate = asyncio.Event()
    registry = _Registry(gate=gate)
    r = disagreements.DisagreementReporter(registry, in_flight_max=3)
    for _ in range(5):
        r.report(node_id=os.urandom(16), job_id=os.urandom(16), platform=(1, 1), node=(9, 9))
    assert (r.in_flight, r.dropped) == (3, 2)
    gate.set()
    await r.drain()
    assert len(registry.reports) == 3 and r.in_flight == 0


# ------------------------------------------------------------ output bound

class _Flooding:
    """A stand-in Triton pool whose node streams ``pieces`` text pieces."""

    def __init__(self, pieces: int) -> None:
        self.pieces = pieces
        self.params: dict = {}
        self.closed = False

    async def generate(self, node, model, version, text_input, params, **kw):
        self.params = params
        try:
            for i in range(self.pieces):
                yield Piece(text=f"w{i} ", input_tokens=5, output_tokens=1, finish_reason=None)
        finally:
            self.closed = True


@pytest.mark.parametrize("pieces", [3, 50])
async def test_a_node_is_asked_for_max_tokens_and_never_delivers_more_text_pieces(pieces):
    node = rpb.Node(node_id=os.urandom(16), provider_id=os.urandom(16), state=rpb.NODE_STATE_READY)
    model = rpb.Model(offer=rpb.ModelOffer(name=LLM, kind=rpb.MODEL_KIND_LLM, price=rpb.Price()), verified=True)
    choice = Choice(NodeInfo(node=node, models={LLM: model}), model, "test", 1)
    job = planning.prepare(chat(os.urandom(16), max_tokens=4), (choice,), counter=None, started_ns=0, t0_s=0.0)
    pool = _Flooding(pieces)
    out = Outcome()
    emitted = []

    async def emit(chunk):
        emitted.append(chunk)

    await Dispatcher(pool).run(job, out, emit)
    assert pool.params["max_tokens"] == 4 and pool.closed
    texts = [c.text for c in emitted if c.WhichOneof("chunk") == "text"]
    assert len(texts) == min(pieces, 4) and len(out.text) == min(pieces, 4)
    assert out.complete == (pieces <= 4)
    if pieces > 4:
        assert choice.info.failed == 1  # cut off: a mark against the node
