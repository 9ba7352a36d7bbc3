"""The demo models in the marketplace's catalog: ``smollm2-135m-instruct``
(the GGUF the demo Triton serves: its digest, context length and tokenizer)
and ``echo``, each with canaries whose reference outputs come from the same
code the demo Triton runs (idlegrid.demo: the prompt builder and the greedy
generation loop of llama.cpp), computed here, never asked of a node.

    models = demo_catalog()                        # computes the reference once per process
    await seed(stub, actor="idlegrid-up")          # puts what the catalog lacks (operator identity)

The language model's reference is the greedy answer to a question whose
answer ends before max_tokens (the end-of-generation token stops it), so a
node that generates past max_tokens still answers it exactly. It takes a
second to compute; it is kept per process, and on disk in ``cache_dir``
when given (keyed by the weights digest, the canary and llama.cpp's version).

Ceilings: none (max_price 0); operators set them with ``idlegrid catalog put``,
and seeding again keeps them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from idlegrid.registry.v1 import registry_pb2 as pb

LLM_TOKENIZER = "smollm2"
LLM_CANARY_PROMPT = ("<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n"
                     "<|im_start|>assistant\n")
LLM_CANARY_MAX_TOKENS = 16
ECHO_CANARY_REQUEST = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4],
                                   "data": [1.5, -2.0, 0.0, 3.25]}]}
ECHO_CANARY_EXPECTED = {"outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 4],
                                     "data": [1.5, -2.0, 0.0, 3.25]}]}
ECHO_TOLERANCE = 1e-6
SEED_TIMEOUT_S = 30.0


def _greedy(prompt: str, max_tokens: int) -> str:
    """What the demo Triton answers to ``prompt`` at temperature 0."""
    from idlegrid.demo.generation import generate
    from idlegrid.demo.sampling import SamplingParams
    from idlegrid.demo.smollm2 import load_smollm2
    from idlegrid.models.prompt import PromptBuilder

    llm = load_smollm2()
    try:
        prompt_tokens = PromptBuilder(llm).build(prompt.encode()).tokens
        chunks = generate(llm, prompt_tokens, SamplingParams(max_tokens=max_tokens, temperature=0.0))
        return "".join(c.text for c in chunks)
    finally:
        llm.close()


@functools.cache
def llm_reference(prompt: str, max_tokens: int, cache_dir: Path | None = None) -> str:
    """The demo model's greedy answer, from ``cache_dir`` when it was computed before."""
    import llama_cpp

    from idlegrid.demo.smollm2 import N_CTX_DEFAULT
    from idlegrid.models.weights import weights_sha256

    key = hashlib.sha256(json.dumps([weights_sha256(), prompt, max_tokens, N_CTX_DEFAULT,
                                     llama_cpp.__version__]).encode()).hexdigest()[:32]
    path = cache_dir / f"canary-{key}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())["expected_text"]
    text = _greedy(prompt, max_tokens)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"expected_text": text}))
        tmp.replace(path)
    return text


def demo_catalog(cache_dir: Path | None = None) -> list[pb.CatalogModel]:
    """The catalog entries of the demo Triton's models."""
    from idlegrid.demo.names import ECHO_MODEL_NAME, LLM_MODEL_NAME
    from idlegrid.demo.smollm2 import N_CTX_DEFAULT
    from idlegrid.models.weights import weights_sha256

    expected = llm_reference(LLM_CANARY_PROMPT, LLM_CANARY_MAX_TOKENS, cache_dir)
    return [
        pb.CatalogModel(name=LLM_MODEL_NAME, kind=pb.MODEL_KIND_LLM, tokenizer=LLM_TOKENIZER,
                        weights_digest=f"sha256:{weights_sha256()}", context_length=N_CTX_DEFAULT,
                        canaries=[pb.CatalogCanary(prompt=LLM_CANARY_PROMPT, max_tokens=LLM_CANARY_MAX_TOKENS,
                                                   expected_text=expected)]),
        pb.CatalogModel(name=ECHO_MODEL_NAME, kind=pb.MODEL_KIND_TENSOR, canaries=[pb.CatalogCanary(
            kserve_request_json=json.dumps(ECHO_CANARY_REQUEST), kserve_expected_json=json.dumps(ECHO_CANARY_EXPECTED),
            tolerance=ECHO_TOLERANCE)]),
    ]


def _same(a: pb.CatalogModel, b: pb.CatalogModel) -> bool:
    """The same model and canaries (an operator's price ceiling aside)."""
    a2, b2 = pb.CatalogModel(), pb.CatalogModel()
    a2.CopyFrom(a)
    b2.CopyFrom(b)
    for m in (a2, b2):
        for field in ("updated_at", "updated_by", "max_price"):
            m.ClearField(field)
    return a2 == b2


async def seed(stub, *, actor: str, models: list[pb.CatalogModel] | None = None, metadata=None,
               cache_dir: Path | None = None) -> list[str]:
    """Puts each demo model the catalog lacks, or holds with other canaries
    or weights (keeping the operator's price ceiling), through ``stub`` (a
    RegistryServiceStub with the operator's or gateway's credentials); the
    names put."""
    import asyncio

    if models is None:
        models = await asyncio.to_thread(demo_catalog, cache_dir)
    # wait_for_ready: the registry may have just started where another just stopped.
    have = {m.name: m for m in (await stub.ListCatalog(pb.ListCatalogRequest(), metadata=metadata,
                                                        timeout=SEED_TIMEOUT_S, wait_for_ready=True)).models}
    put = []
    for m in models:
        if m.name in have:
            if _same(have[m.name], m):
                continue
            m = pb.CatalogModel(**{f.name: v for f, v in m.ListFields()})
            m.max_price.CopyFrom(have[m.name].max_price)
        await stub.PutCatalogModel(pb.PutCatalogModelRequest(model=m, actor=actor, reason="the demo node's models"),
                                   metadata=metadata, timeout=SEED_TIMEOUT_S, wait_for_ready=True)
        put.append(m.name)
    return put


async def seed_at(addr: str, *, token: str | None, actor: str, cache_dir: Path | None = None,
                  models: list[pb.CatalogModel] | None = None, config=None) -> list[str]:
    """:func:`seed` through a new channel to the registry at ``addr`` (the
    benchmarks' registries run as child processes)."""
    from idlegrid.common.channel import open_channel
    from idlegrid.registry.v1 import registry_pb2_grpc

    async with open_channel(addr, token=token, config=config) as ch:
        return await seed(registry_pb2_grpc.RegistryServiceStub(ch), actor=actor, models=models, cache_dir=cache_dir)
