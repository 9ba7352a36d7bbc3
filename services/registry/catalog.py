"""The model catalog: every model the marketplace sells, owned by the
platform, not by the nodes.

A node may offer only catalog models (RegisterNode is INVALID_ARGUMENT
otherwise, with the reason in the error):

| refusal | reason |
|---|---|
| the model is not in the catalog | model_not_in_catalog |
| another kind or context length than the catalog's | catalog_mismatch |
| another weights digest than the catalog's (an empty one where the catalog has one, or one the catalog does not know) | weights_digest_mismatch |
| a price above the catalog's ceiling (max_price, 0 = none) | price_above_ceiling |

Verification runs the catalog's canaries (canary.py); the catalog's
tokenizer goes out on each Model. Limits (proto): name 1..128 chars of
[A-Za-z0-9_.-]; 1..8 canaries; an LLM canary's prompt 1..4,096 chars,
max_tokens 1..256, expected_text at most 65,536 chars; a tensor canary's
JSON bodies at most 65,536 chars each, tolerance 0..1e9.
"""

from __future__ import annotations

import math
import re

from idlegrid.common.errors import InvalidArgument
from idlegrid.registry import canary_tensors, validate
from idlegrid.registry.v1 import registry_pb2 as pb

CANARIES_MAX = 8
PROMPT_CHARS_MAX = 4_096
CANARY_TOKENS_MAX = 256
EXPECTED_CHARS_MAX = 65_536
KSERVE_JSON_CHARS_MAX = 65_536
TOLERANCE_MAX = 1e9
TOKENIZER_CHARS_MAX = 128
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_PRICES = ("per_million_input_tokens", "per_million_output_tokens", "per_request")


def _canary(c: pb.CatalogCanary, i: int, kind: int) -> None:
    where = f"model.canaries[{i}]"
    if kind == pb.MODEL_KIND_LLM:
        if not 1 <= len(c.prompt) <= PROMPT_CHARS_MAX:
            raise InvalidArgument(f"{where}.prompt must be 1..{PROMPT_CHARS_MAX} chars")
        if not 1 <= c.max_tokens <= CANARY_TOKENS_MAX:
            raise InvalidArgument(f"{where}.max_tokens must be in 1..{CANARY_TOKENS_MAX}")
        if len(c.expected_text) > EXPECTED_CHARS_MAX:
            raise InvalidArgument(f"{where}.expected_text must be at most {EXPECTED_CHARS_MAX} chars")
        if c.kserve_request_json or c.kserve_expected_json or c.tolerance:
            raise InvalidArgument(f"{where}: a language model's canary has a prompt, not KServe bodies")
        return
    if c.prompt or c.max_tokens or c.expected_text:
        raise InvalidArgument(f"{where}: a tensor model's canary has KServe bodies, not a prompt")
    for field in ("kserve_request_json", "kserve_expected_json"):
        if not 1 <= len(getattr(c, field)) <= KSERVE_JSON_CHARS_MAX:
            raise InvalidArgument(f"{where}.{field} must be 1..{KSERVE_JSON_CHARS_MAX} chars")
    if not math.isfinite(c.tolerance) or not 0 <= c.tolerance <= TOLERANCE_MAX:
        raise InvalidArgument(f"{where}.tolerance must be in 0..{TOLERANCE_MAX:g}")
    try:
        canary_tensors.request(c.kserve_request_json)
        canary_tensors.expected(c.kserve_expected_json)
    except ValueError as e:
        raise InvalidArgument(f"{where}: {e}") from None


def check_model(m: pb.CatalogModel) -> None:
    """Every limit the proto documents; INVALID_ARGUMENT names the first broken."""
    if not _NAME.match(m.name):
        raise InvalidArgument("model.name must be 1..128 chars of [A-Za-z0-9_.-]")
    if m.kind not in (pb.MODEL_KIND_LLM, pb.MODEL_KIND_TENSOR):
        raise InvalidArgument("model.kind must be MODEL_KIND_LLM or MODEL_KIND_TENSOR")
    llm = m.kind == pb.MODEL_KIND_LLM
    if llm and (not 1 <= len(m.tokenizer) <= TOKENIZER_CHARS_MAX or not _NAME.match(m.tokenizer)):
        raise InvalidArgument(f"model.tokenizer must be 1..{TOKENIZER_CHARS_MAX} chars of [A-Za-z0-9_.-] "
                              "for a language model")
    if not llm and m.tokenizer:
        raise InvalidArgument("model.tokenizer must be empty for a tensor model")
    if m.weights_digest and not _DIGEST.match(m.weights_digest):
        raise InvalidArgument("model.weights_digest must be empty or sha256:<64 lowercase hex>")
    if llm and not 1 <= m.context_length <= validate.CONTEXT_LENGTH_MAX:
        raise InvalidArgument(f"model.context_length must be in 1..{validate.CONTEXT_LENGTH_MAX} "
                              "for a language model")
    if not llm and m.context_length:
        raise InvalidArgument("model.context_length must be 0 for a tensor model")
    if not 1 <= len(m.canaries) <= CANARIES_MAX:
        raise InvalidArgument(f"model.canaries: between 1 and {CANARIES_MAX}, got {len(m.canaries)}")
    for i, c in enumerate(m.canaries):
        _canary(c, i, m.kind)
    for field in _PRICES:
        if getattr(m.max_price, field) > validate.PRICE_MAX:
            raise InvalidArgument(f"model.max_price.{field} must be in 0..{validate.PRICE_MAX}")
    if llm and m.max_price.per_request:
        raise InvalidArgument("model.max_price.per_request must be 0: a language model is priced per token")
    if not llm and (m.max_price.per_million_input_tokens or m.max_price.per_million_output_tokens):
        raise InvalidArgument("model.max_price: a tensor model is priced per request; token ceilings must be 0")


def refusal(o: pb.ModelOffer, m: pb.CatalogModel | None) -> tuple[str, str] | None:
    """(reason, message) when offer ``o`` may not be sold against catalog
    entry ``m`` (None: not in the catalog), else None."""
    if m is None:
        return "model_not_in_catalog", f"model {o.name!r} is not in the marketplace's catalog"
    if o.kind != m.kind:
        return "catalog_mismatch", f"model {o.name!r}: the catalog lists it as {pb.ModelKind.Name(m.kind)}"
    if o.context_length != m.context_length:
        return "catalog_mismatch", (f"model {o.name!r}: context_length {o.context_length}, the catalog's is "
                                    f"{m.context_length}")
    if o.weights_digest != m.weights_digest:
        return "weights_digest_mismatch", (
            f"model {o.name!r}: weights digest {o.weights_digest or '(none)'} is not the catalog's "
            f"{m.weights_digest or '(none)'}")
    for field in _PRICES:
        ceiling, price = getattr(m.max_price, field), getattr(o.price, field)
        if ceiling and price > ceiling:
            return "price_above_ceiling", (f"model {o.name!r}: price.{field} {price} is above the catalog's "
                                           f"ceiling of {ceiling} micro-credits")
    return None


class Catalog:
    """The catalog in memory (authoritative while the registry runs; the
    table follows each change)."""

    def __init__(self) -> None:
        self.models: dict[str, pb.CatalogModel] = {}

    def get(self, name: str) -> pb.CatalogModel | None:
        return self.models.get(name)

    def admit(self, offers) -> None:
        """INVALID_ARGUMENT (with the reason) for the first offer the catalog refuses."""
        for i, o in enumerate(offers):
            why = refusal(o, self.models.get(o.name))
            if why is not None:
                raise InvalidArgument(f"models[{i}]: {why[1]}", reason=why[0])

    def conforms(self, o: pb.ModelOffer) -> bool:
        return refusal(o, self.models.get(o.name)) is None

    def tokenizer(self, name: str) -> str:
        m = self.models.get(name)
        return m.tokenizer if m is not None else ""

    def snapshot(self) -> dict[str, pb.CatalogModel]:
        return dict(self.models)
