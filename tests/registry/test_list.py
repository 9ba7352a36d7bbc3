"""ListNodes: ordered by id, paged, filtered by model, state and provider."""

from __future__ import annotations

from idlegrid.registry.v1 import registry_pb2 as pb
from tests.registry.support import echo_offer, llm_offer, registration


async def _all(h, **filters) -> list[pb.Node]:
    out, token = [], b""
    while True:
        r = await h.admin.ListNodes(pb.ListNodesRequest(page_size=2, page_token=token, **filters))
        assert len(r.nodes) <= 2
        out.extend(r.nodes)
        token = r.next_page_token
        if not token:
            return out


async def test_pages_cover_every_node_once_in_id_order(fast):
    p = await fast.provider()
    ids = [(await fast.register(p, registration())).node_id for _ in range(5)]
    nodes = await _all(fast)
    assert [n.node_id for n in nodes] == sorted(ids)
    r = await fast.admin.ListNodes(pb.ListNodesRequest())
    assert len(r.nodes) == 5 and not r.next_page_token  # default page size 100


async def test_filters_by_model_state_and_provider(fast):
    p, q = await fast.provider(), await fast.provider()
    llm = await fast.register(p, registration(models=[llm_offer()]))
    echo = await fast.register(p, registration(models=[echo_offer()]))
    other = await fast.register(q, registration(models=[echo_offer(), llm_offer()]))
    for n in (llm, echo, other):
        await fast.wait_state(n.node_id, pb.NODE_STATE_READY)
    await fast.anon.Drain(pb.DrainRequest(node_id=echo.node_id), metadata=echo.md)
    ids = lambda nodes: {n.node_id for n in nodes}  # noqa: E731
    assert ids(await _all(fast, model="smollm2-135m-instruct")) == {llm.node_id, other.node_id}
    assert ids(await _all(fast, states=[pb.NODE_STATE_READY])) == {llm.node_id, other.node_id}
    assert ids(await _all(fast, states=[pb.NODE_STATE_DRAINING, pb.NODE_STATE_OFFLINE])) == {echo.node_id}
    assert ids(await _all(fast, provider_id=q.provider.provider_id)) == {other.node_id}
    assert ids(await _all(fast, model="echo", provider_id=p.provider.provider_id,
                          states=[pb.NODE_STATE_READY])) == set()
    assert await _all(fast, model="no-such-model") == []
