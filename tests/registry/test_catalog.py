"""The model catalog: only what the platform sells may be offered, with the
catalog's kind, context length and weights digest, at or below its price
ceiling; verification compares each canary with the catalog's reference
(greedy text exactly, tensors within the tolerance); the catalog's tokenizer
goes out on each model; removing a model takes its offers out of routing."""

from __future__ import annotations

import grpc
import pytest

from idlegrid.common.errors import REASON_KEY
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.harness.registry import OPERATOR
from tests.registry.support import (
    ECHO,
    LLM,
    echo_offer,
    expect_status,
    llm_offer,
    next_delta,
    read_snapshot,
    registration,
)

READY, OFFLINE = pb.NODE_STATE_READY, pb.NODE_STATE_OFFLINE


def reason_of(e: grpc.aio.AioRpcError) -> str | None:
    return dict(e.trailing_metadata() or ()).get(REASON_KEY)


async def refused(h, provider, offer: pb.ModelOffer, reason: str, code=grpc.StatusCode.INVALID_ARGUMENT) -> str:
    e = await expect_status(h.anon.RegisterNode(registration(models=[offer]), metadata=provider.md), code)
    assert reason_of(e) == reason, (reason_of(e), e.details())
    return e.details()


async def test_the_harness_sells_the_demo_models_with_their_tokenizer_digest_and_canaries(fast):
    models = {m.name: m for m in (await fast.admin.ListCatalog(pb.ListCatalogRequest())).models}
    assert list(models) == sorted(models) and {LLM, ECHO} <= models.keys()
    llm = models[LLM]
    assert llm.kind == pb.MODEL_KIND_LLM and llm.tokenizer == "smollm2" and llm.context_length == 2048
    assert llm.weights_digest == llm_offer().weights_digest and llm.weights_digest.startswith("sha256:")
    assert llm.canaries[0].expected_text and llm.canaries[0].max_tokens >= 1
    assert llm.updated_by and llm.updated_at.seconds > 0
    assert models[ECHO].kind == pb.MODEL_KIND_TENSOR and models[ECHO].canaries[0].kserve_request_json


async def test_an_offer_the_catalog_does_not_sell_is_refused_with_its_reason(fast):
    p = await fast.provider()
    ghost = pb.ModelOffer(name="ghost", kind=pb.MODEL_KIND_TENSOR, price=pb.Price(per_request=1))
    assert "not in the marketplace's catalog" in await refused(fast, p, ghost, "model_not_in_catalog")
    wrong_kind = pb.ModelOffer(name=ECHO, kind=pb.MODEL_KIND_LLM, context_length=2048)
    await refused(fast, p, wrong_kind, "catalog_mismatch")
    short_context = llm_offer()
    short_context.context_length = 1024
    await refused(fast, p, short_context, "catalog_mismatch")
    listed = await fast.admin.ListNodes(pb.ListNodesRequest(provider_id=p.provider.provider_id))
    assert not listed.nodes  # nothing was registered


async def test_a_node_claiming_an_unknown_or_no_digest_is_refused(fast):
    p = await fast.provider()
    unknown = llm_offer()
    unknown.weights_digest = "sha256:" + "0" * 64
    assert "not the catalog's" in await refused(fast, p, unknown, "weights_digest_mismatch")
    none = llm_offer()
    none.weights_digest = ""
    await refused(fast, p, none, "weights_digest_mismatch")
    digest_on_tensor = echo_offer()
    digest_on_tensor.weights_digest = "sha256:" + "1" * 64  # the catalog knows no weights for echo
    await refused(fast, p, digest_on_tensor, "weights_digest_mismatch")
    node = await fast.register(p, registration(models=[llm_offer()]))  # the catalog's digest: admitted
    await fast.wait_state(node.node_id, READY)


async def test_a_price_above_the_catalogs_ceiling_is_refused(fast):
    p = await fast.provider()
    llm = await fast.catalog_entry(LLM)
    llm.max_price.CopyFrom(pb.Price(per_million_input_tokens=100_000, per_million_output_tokens=300_000))
    await fast.sell(llm)
    details = await refused(fast, p, llm_offer(output=300_001), "price_above_ceiling")
    assert "per_million_output_tokens 300001" in details and "300000" in details
    await refused(fast, p, llm_offer(input=100_001), "price_above_ceiling")
    node = await fast.register(p, registration(models=[llm_offer(input=100_000, output=300_000)]))
    assert (await fast.wait_state(node.node_id, READY)).models[0].tokenizer == "smollm2"


BAD_MODELS = {
    "no name": dict(name=""),
    "bad name": dict(name="a b"),
    "no kind": dict(kind=pb.MODEL_KIND_UNSPECIFIED),
    "llm without tokenizer": dict(tokenizer=""),
    "bad digest": dict(weights_digest="md5:00"),
    "llm without context": dict(context_length=0),
    "context too long": dict(context_length=(1 << 24) + 1),
    "no canary": dict(canaries=[]),
    "nine canaries": dict(canaries=[pb.CatalogCanary(prompt="x", max_tokens=1, expected_text="y")] * 9),
    "canary without prompt": dict(canaries=[pb.CatalogCanary(prompt="", max_tokens=1)]),
    "canary of 257 tokens": dict(canaries=[pb.CatalogCanary(prompt="x", max_tokens=257)]),
    "prompt too long": dict(canaries=[pb.CatalogCanary(prompt="x" * 4097, max_tokens=1)]),
    "llm canary with kserve body": dict(canaries=[pb.CatalogCanary(prompt="x", max_tokens=1,
                                                                   kserve_request_json="{}")]),
    "ceiling above PRICE_MAX": dict(max_price=pb.Price(per_million_output_tokens=10**12 + 1)),
    "llm priced per request": dict(max_price=pb.Price(per_request=1)),
}
BAD_TENSOR_CANARIES = {
    "not json": pb.CatalogCanary(kserve_request_json="{", kserve_expected_json="{}"),
    "no inputs": pb.CatalogCanary(kserve_request_json='{"inputs": []}', kserve_expected_json='{"outputs": []}'),
    "data and shape disagree": pb.CatalogCanary(
        kserve_request_json='{"inputs": [{"name": "I", "datatype": "FP32", "shape": [2], "data": [1]}]}',
        kserve_expected_json='{"outputs": [{"name": "O", "datatype": "FP32", "shape": [1], "data": [1]}]}'),
    "unknown datatype": pb.CatalogCanary(
        kserve_request_json='{"inputs": [{"name": "I", "datatype": "FP128", "shape": [1], "data": [1]}]}',
        kserve_expected_json='{"outputs": [{"name": "O", "datatype": "FP32", "shape": [1], "data": [1]}]}'),
    "negative tolerance": pb.CatalogCanary(
        kserve_request_json='{"inputs": [{"name": "I", "datatype": "FP32", "shape": [1], "data": [1]}]}',
        kserve_expected_json='{"outputs": [{"name": "O", "datatype": "FP32", "shape": [1], "data": [1]}]}',
        tolerance=-1),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
async def test_a_catalog_entry_beyond_a_limit_is_refused_and_changes_nothing(fast, case):
    m = await fast.catalog_entry(LLM)
    fields = dict(BAD_MODELS[case])
    canaries = fields.pop("canaries", None)
    for k, v in fields.items():
        if isinstance(v, pb.Price):
            getattr(m, k).CopyFrom(v)
        else:
            setattr(m, k, v)
    if canaries is not None:
        del m.canaries[:]
        m.canaries.extend(canaries)
    await expect_status(fast.sell(m), grpc.StatusCode.INVALID_ARGUMENT)
    assert await fast.catalog_entry(LLM) == await fast.catalog_entry(LLM)
    assert (await fast.catalog_entry(LLM)).tokenizer == "smollm2"


@pytest.mark.parametrize("case", sorted(BAD_TENSOR_CANARIES))
async def test_a_tensor_canary_that_is_not_a_kserve_body_is_refused(fast, case):
    m = await fast.catalog_entry(ECHO)
    m.name = "echo-2"
    del m.canaries[:]
    m.canaries.append(BAD_TENSOR_CANARIES[case])
    await expect_status(fast.sell(m), grpc.StatusCode.INVALID_ARGUMENT)


async def test_the_catalog_needs_an_actor_and_a_reason(fast):
    m = await fast.catalog_entry(ECHO)
    for actor, reason in (("", "why"), (OPERATOR, ""), ("x" * 129, "why"), (OPERATOR, "y" * 1025)):
        await expect_status(fast.admin.PutCatalogModel(pb.PutCatalogModelRequest(model=m, actor=actor, reason=reason)),
                            grpc.StatusCode.INVALID_ARGUMENT)
        await expect_status(fast.admin.RemoveCatalogModel(pb.RemoveCatalogModelRequest(
            name=ECHO, actor=actor, reason=reason)), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_status(fast.admin.RemoveCatalogModel(pb.RemoveCatalogModelRequest(
        name="ghost", actor=OPERATOR, reason="why")), grpc.StatusCode.NOT_FOUND)
    # Nodes and providers hold no operator credentials.
    await expect_status(fast.anon.ListCatalog(pb.ListCatalogRequest()), grpc.StatusCode.UNAUTHENTICATED)


async def test_removing_a_model_unverifies_its_offers_and_refuses_new_ones(fast):
    p = await fast.provider()
    node = await fast.register(p, registration(models=[echo_offer(), llm_offer()]))
    await fast.wait_state(node.node_id, READY)
    watch = fast.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    await read_snapshot(watch)
    await fast.admin.RemoveCatalogModel(pb.RemoveCatalogModelRequest(name=ECHO, actor=OPERATOR, reason="withdrawn"))
    d = await next_delta(watch)
    watch.cancel()
    verified = {m.offer.name: m.verified for m in d.node.models}
    assert d.node.node_id == node.node_id and verified == {ECHO: False, LLM: True}
    await refused(fast, p, echo_offer(), "model_not_in_catalog")
    actions = (await fast.admin.ListOperatorActions(pb.ListOperatorActionsRequest())).actions
    assert (actions[-1].action, actions[-1].target, actions[-1].reason) == ("remove_catalog_model", ECHO, "withdrawn")


async def test_a_changed_digest_unverifies_the_offers_that_no_longer_match(fast):
    p = await fast.provider()
    node = await fast.register(p, registration(models=[llm_offer()]))
    await fast.wait_state(node.node_id, READY)
    llm = await fast.catalog_entry(LLM)
    llm.weights_digest = "sha256:" + "a" * 64
    await fast.sell(llm, reason="new weights")
    n = await fast.node(node.node_id)
    assert n.state == READY and not n.models[0].verified


async def test_the_catalog_and_its_effects_survive_a_restart(make_registry, pg_admin_url):
    from tests.harness import new_database
    from tests.registry.conftest import DEFAULT

    db = await new_database(pg_admin_url)
    first = await make_registry(DEFAULT, db_url=db)
    echo = await first.catalog_entry(ECHO)
    echo.max_price.per_request = 77
    await first.sell(echo)
    await first.stop()
    second = await make_registry(DEFAULT, db_url=db)
    assert (await second.catalog_entry(ECHO)).max_price.per_request == 77


@pytest.mark.slow  # a real demo Triton
async def test_a_node_verified_by_the_catalogs_canaries_carries_the_catalogs_tokenizer(reg, triton):
    p = await reg.provider()
    node = await reg.register(p, registration(triton.grpc_url, models=[llm_offer(), echo_offer()]))
    n = await reg.wait_state(node.node_id, READY, OFFLINE)
    assert n.state == READY, n.state_detail
    by_name = {m.offer.name: m for m in n.models}
    assert by_name[LLM].verified and by_name[LLM].tokenizer == "smollm2"
    assert by_name[ECHO].verified and by_name[ECHO].tokenizer == ""


@pytest.mark.slow  # a real demo Triton
async def test_a_language_model_whose_greedy_answer_is_not_the_reference_fails_verification(reg, triton):
    llm = await reg.catalog_entry(LLM)
    truth = llm.canaries[0].expected_text
    llm.canaries[0].expected_text = "The capital of France is Lyon."  # what another model would say
    await reg.sell(llm)
    p = await reg.provider()
    node = await reg.register(p, registration(triton.grpc_url, models=[llm_offer()]))
    n = await reg.wait_state(node.node_id, READY, OFFLINE)
    assert (n.state, n.state_reason) == (OFFLINE, pb.STATE_REASON_VERIFICATION_FAILED)
    assert "does not match the catalog's reference" in n.state_detail
    assert repr(truth) in n.state_detail and "Lyon" in n.state_detail
    assert not any(m.verified for m in n.models)


@pytest.mark.slow  # a real demo Triton
async def test_a_tensor_model_whose_outputs_are_off_by_more_than_the_tolerance_fails_verification(reg, triton):
    echo = await reg.catalog_entry(ECHO)
    body = echo.canaries[0].kserve_expected_json.replace("3.25", "3.5")
    echo.canaries[0].kserve_expected_json = body
    echo.canaries[0].tolerance = 0.1
    await reg.sell(echo)
    p = await reg.provider()
    node = await reg.register(p, registration(triton.grpc_url, models=[echo_offer()]))
    n = await reg.wait_state(node.node_id, READY, OFFLINE)
    assert n.state_reason == pb.STATE_REASON_VERIFICATION_FAILED
    assert "OUTPUT0" in n.state_detail and "more than 0.1" in n.state_detail
    echo.canaries[0].tolerance = 0.3  # within the tolerance now
    await reg.sell(echo)
    again = await reg.register(p, registration(triton.grpc_url, models=[echo_offer()], node_id=node.node_id))
    assert (await reg.wait_state(again.node_id, READY, OFFLINE)).state == READY
