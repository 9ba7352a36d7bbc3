"""Validation of every request field against the limits the proto documents.
A request that breaks one is INVALID_ARGUMENT and changes nothing."""

from __future__ import annotations

import ipaddress
import re

from idlegrid.common.errors import InvalidArgument
from idlegrid.common.paging import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX
from idlegrid.registry.v1 import registry_pb2 as pb

ID_BYTES = 16
ZERO_ID = bytes(ID_BYTES)
PRICE_MAX = 10**12
PROVIDER_NAME_CHARS_MAX = 128
MODEL_NAME_CHARS_MAX = 128
MODELS_MAX = 64
GPU_KINDS_MAX = 16
GPU_COUNT_MAX = 64
GPU_MEMORY_BYTES_MAX = 1 << 40
CPU_CORES_MAX = 4_096
MEMORY_BYTES_MAX = 64 << 40
MAX_BATCH_SIZE_MAX = 65_536
CONTEXT_LENGTH_MAX = 1 << 24
ENDPOINT_CHARS_MAX = 255
REGION_CHARS_MAX = 64
LABELS_MAX = 32
LABEL_KEY_CHARS_MAX = 63
LABEL_VALUE_CHARS_MAX = 255
AGENT_VERSION_CHARS_MAX = 64
GPU_NAME_CHARS_MAX = 128
LOAD_COUNT_MAX = 1_000_000
LATENCY_US_MAX = 3_600_000_000
DETAIL_CHARS_MAX = 1_024      # a node's state_detail (longer causes are cut)
RELAY_ID_CHARS_MAX = 128
LINK_ID_BYTES = 16

_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_VERSION = re.compile(r"^[0-9]{1,19}$")
_REGION = re.compile(r"^[a-z0-9-]*$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def node_id(value: bytes, field: str = "node_id") -> bytes:
    if len(value) != ID_BYTES:
        raise InvalidArgument(f"{field} must be {ID_BYTES} bytes, got {len(value)}")
    if value == ZERO_ID:
        raise InvalidArgument(f"{field} must not be all zeros")
    return value


def provider(request: pb.CreateProviderRequest) -> tuple[str, bytes]:
    name = request.name
    if not 1 <= len(name) <= PROVIDER_NAME_CHARS_MAX or name != name.strip() or not name.isprintable():
        raise InvalidArgument(f"name must be 1..{PROVIDER_NAME_CHARS_MAX} printable chars without "
                              "leading or trailing spaces")
    return name, node_id(request.ledger_account_id, "ledger_account_id")


def endpoint(value: str) -> str:
    """``host:port``: a DNS name, an IPv4 literal or a bracketed IPv6 literal."""
    if not 1 <= len(value) <= ENDPOINT_CHARS_MAX:
        raise InvalidArgument(f"endpoint must be 1..{ENDPOINT_CHARS_MAX} chars")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or port != str(int(port)):
        raise InvalidArgument(f"endpoint must be host:port with a port in 1..65535, got {value!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise InvalidArgument(f"endpoint has a malformed IPv6 literal: {value!r}")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidArgument(f"endpoint has a malformed IPv6 literal: {value!r}") from None
        return value
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise InvalidArgument(f"endpoint host must be a DNS name or an IP literal, got {value!r}")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise InvalidArgument(f"endpoint has a malformed IPv4 address: {value!r}") from None
    return value


def hardware(hw: pb.Hardware) -> None:
    if len(hw.gpus) > GPU_KINDS_MAX:
        raise InvalidArgument(f"hardware.gpus: at most {GPU_KINDS_MAX} kinds, got {len(hw.gpus)}")
    for i, gpu in enumerate(hw.gpus):
        if not 1 <= len(gpu.name) <= GPU_NAME_CHARS_MAX or not gpu.name.isprintable():
            raise InvalidArgument(f"hardware.gpus[{i}].name must be 1..{GPU_NAME_CHARS_MAX} printable chars")
        if not 1 <= gpu.count <= GPU_COUNT_MAX:
            raise InvalidArgument(f"hardware.gpus[{i}].count must be in 1..{GPU_COUNT_MAX}, got {gpu.count}")
        if not 1 <= gpu.memory_bytes <= GPU_MEMORY_BYTES_MAX:
            raise InvalidArgument(f"hardware.gpus[{i}].memory_bytes must be in 1..{GPU_MEMORY_BYTES_MAX}")
    if not 1 <= hw.cpu_cores <= CPU_CORES_MAX:
        raise InvalidArgument(f"hardware.cpu_cores must be in 1..{CPU_CORES_MAX}, got {hw.cpu_cores}")
    if not 1 <= hw.memory_bytes <= MEMORY_BYTES_MAX:
        raise InvalidArgument(f"hardware.memory_bytes must be in 1..{MEMORY_BYTES_MAX}, got {hw.memory_bytes}")


def labels(values) -> dict[str, str]:
    if len(values) > LABELS_MAX:
        raise InvalidArgument(f"labels: at most {LABELS_MAX}, got {len(values)}")
    for k, v in values.items():
        if not 1 <= len(k) <= LABEL_KEY_CHARS_MAX or not _LABEL_KEY.match(k):
            raise InvalidArgument(f"label key {k[:80]!r} must be 1..{LABEL_KEY_CHARS_MAX} chars of [A-Za-z0-9_.-]")
        if len(v) > LABEL_VALUE_CHARS_MAX or not v.isprintable():
            raise InvalidArgument(f"label {k!r}: value must be 0..{LABEL_VALUE_CHARS_MAX} printable chars")
    return dict(values)


def _price(p: pb.Price, i: int, kind: int) -> None:
    for field in ("per_million_input_tokens", "per_million_output_tokens", "per_request"):
        value = getattr(p, field)
        if value > PRICE_MAX:
            raise InvalidArgument(f"models[{i}].price.{field} must be in 0..{PRICE_MAX} micro-credits "
                                  f"(a negative price sent as int64 reads as a huge uint64), got {value}")
    if kind == pb.MODEL_KIND_LLM and p.per_request:
        raise InvalidArgument(f"models[{i}]: a language model is priced per token; per_request must be 0")
    if kind == pb.MODEL_KIND_TENSOR and (p.per_million_input_tokens or p.per_million_output_tokens):
        raise InvalidArgument(f"models[{i}]: a tensor model is priced per request; token prices must be 0")


def offers(models) -> list[pb.ModelOffer]:
    if not 1 <= len(models) <= MODELS_MAX:
        raise InvalidArgument(f"models: between 1 and {MODELS_MAX}, got {len(models)}")
    seen: set[tuple[str, str]] = set()
    for i, m in enumerate(models):
        if not 1 <= len(m.name) <= MODEL_NAME_CHARS_MAX or not _MODEL_NAME.match(m.name):
            raise InvalidArgument(f"models[{i}].name must be 1..{MODEL_NAME_CHARS_MAX} chars of [A-Za-z0-9_.-]")
        if m.version and not _VERSION.match(m.version):
            raise InvalidArgument(f"models[{i}].version must be empty or 1..19 digits, got {m.version[:40]!r}")
        if (m.name, m.version) in seen:
            raise InvalidArgument(f"models[{i}]: {m.name!r} version {m.version!r} is listed twice")
        seen.add((m.name, m.version))
        if m.kind not in (pb.MODEL_KIND_LLM, pb.MODEL_KIND_TENSOR):
            raise InvalidArgument(f"models[{i}].kind must be MODEL_KIND_LLM or MODEL_KIND_TENSOR")
        if m.max_batch_size > MAX_BATCH_SIZE_MAX:
            raise InvalidArgument(f"models[{i}].max_batch_size must be at most {MAX_BATCH_SIZE_MAX}")
        if m.kind == pb.MODEL_KIND_LLM and not 1 <= m.context_length <= CONTEXT_LENGTH_MAX:
            raise InvalidArgument(f"models[{i}].context_length must be in 1..{CONTEXT_LENGTH_MAX} "
                                  "for a language model")
        if m.kind == pb.MODEL_KIND_TENSOR and m.context_length:
            raise InvalidArgument(f"models[{i}].context_length must be 0 for a tensor model")
        if m.weights_digest and not _DIGEST.match(m.weights_digest):
            raise InvalidArgument(f"models[{i}].weights_digest must be empty or sha256:<64 lowercase hex>")
        _price(m.price, i, m.kind)
    return list(models)


def registration(request: pb.RegisterNodeRequest) -> None:
    if request.node_id:
        node_id(request.node_id)
    if request.endpoint:  # empty: a linked node
        endpoint(request.endpoint)
    if not request.HasField("hardware"):
        raise InvalidArgument("hardware is required")
    hardware(request.hardware)
    if len(request.region) > REGION_CHARS_MAX or not _REGION.match(request.region):
        raise InvalidArgument(f"region must be 0..{REGION_CHARS_MAX} chars of [a-z0-9-]")
    labels(request.labels)
    offers(request.models)
    if len(request.agent_version) > AGENT_VERSION_CHARS_MAX or not request.agent_version.isprintable():
        raise InvalidArgument(f"agent_version must be 0..{AGENT_VERSION_CHARS_MAX} printable chars")


def load(value: pb.NodeLoad) -> None:
    """Cheap checks for the heartbeat hot path."""
    if value.in_flight > LOAD_COUNT_MAX or value.queue_depth > LOAD_COUNT_MAX:
        raise InvalidArgument(f"load.in_flight and load.queue_depth must be at most {LOAD_COUNT_MAX}")
    if value.recent_latency_us > LATENCY_US_MAX:
        raise InvalidArgument(f"load.recent_latency_us must be at most {LATENCY_US_MAX}")
    if value.gpu_utilization_pct > 100:
        raise InvalidArgument("load.gpu_utilization_pct must be at most 100")


def page_size(value: int) -> int:
    if value > PAGE_SIZE_MAX:
        raise InvalidArgument(f"page_size must be at most {PAGE_SIZE_MAX}, got {value}")
    return value or PAGE_SIZE_DEFAULT


def attach(request: pb.AttachLinkRequest) -> None:
    node_id(request.node_id)
    if not 1 <= len(request.relay_id) <= RELAY_ID_CHARS_MAX or not request.relay_id.isprintable():
        raise InvalidArgument(f"relay_id must be 1..{RELAY_ID_CHARS_MAX} printable chars")
    try:
        endpoint(request.relay_addr)
    except InvalidArgument as e:
        raise InvalidArgument(f"relay_addr: {e.message}") from None
    link_id(request.link_id)


def link_id(value: bytes) -> None:
    if len(value) != LINK_ID_BYTES:
        raise InvalidArgument(f"link_id must be {LINK_ID_BYTES} bytes, got {len(value)}")


def pause_detail(value: str) -> str:
    if len(value) > DETAIL_CHARS_MAX or not value.isprintable():
        raise InvalidArgument(f"detail must be 0..{DETAIL_CHARS_MAX} printable chars")
    return value


ACTOR_CHARS_MAX = 128
REASON_CHARS_MAX = 1_024
JOB_ID_BYTES = 16
SEQ_MAX = (1 << 63) - 1


def operator(actor: str, reason: str) -> None:
    """Who acts (1..128 printable chars) and why (1..1,024 printable chars)."""
    if not 1 <= len(actor) <= ACTOR_CHARS_MAX or not actor.isprintable():
        raise InvalidArgument(f"actor is required: 1..{ACTOR_CHARS_MAX} printable chars")
    if not 1 <= len(reason) <= REASON_CHARS_MAX or not reason.isprintable() or not reason.strip():
        raise InvalidArgument(f"reason is required: 1..{REASON_CHARS_MAX} printable chars")


def check_report(request: pb.ReportCheckRequest) -> None:
    node_id(request.node_id)
    node_id(request.job_id, "job_id")
    if request.kind not in (pb.CHECK_KIND_SPOT_CHECK, pb.CHECK_KIND_TOKEN_COUNT):
        raise InvalidArgument("kind must be CHECK_KIND_SPOT_CHECK or CHECK_KIND_TOKEN_COUNT")
    if len(request.detail) > DETAIL_CHARS_MAX or not request.detail.isprintable():
        raise InvalidArgument(f"detail must be 0..{DETAIL_CHARS_MAX} printable chars")
    if request.checker_node_id:
        node_id(request.checker_node_id, "checker_node_id")


def actions_page(request: pb.ListOperatorActionsRequest) -> tuple[int, int]:
    """(after_seq, limit) of a ListOperatorActions request."""
    if request.after_seq > SEQ_MAX:
        raise InvalidArgument(f"after_seq must be at most {SEQ_MAX}")
    if request.limit > PAGE_SIZE_MAX:
        raise InvalidArgument(f"limit must be at most {PAGE_SIZE_MAX}, got {request.limit}")
    return request.after_seq, request.limit or PAGE_SIZE_DEFAULT
