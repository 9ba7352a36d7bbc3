"""The node config file (TOML): where the node is reachable, and the price of
each model it offers. Read once at start-up; every mistake names its key.

Format (all keys optional except the models to offer)::

    # Triton gRPC address the registry and the schedulers reach; default: --triton-url
    endpoint = "203.0.113.7:8001"
    region = "eu-west"                  # [a-z0-9-], up to 64 chars
    provider_token_file = "/etc/idlegrid/provider-token"   # or --provider-token-file

    [labels]                            # free-form, up to 32
    tier = "gaming-pc"

    # One table per model to offer, named as in Triton. A model Triton serves
    # but this file does not price is not offered. Prices are integer
    # micro-credits (1 credit = 1,000,000), 0..1,000,000,000,000.
    [models."smollm2-135m-instruct"]
    price_per_million_input_tokens = 100000
    price_per_million_output_tokens = 400000
    context_length = 2048               # required for a language model
    weights_file = "/models/smollm2.gguf"   # optional: its sha256 is advertised
    # weights_digest = "sha256:<64 hex>"     # or give the digest directly
    # version = "1"                         # optional: a Triton model version
    # kind = "llm"                          # optional: "llm" or "tensor"; default read from Triton

    [models.echo]
    price_per_request = 5

    # Idle means idle (all optional). The node pauses (no new jobs; running
    # jobs finish) while its owner uses the GPU, outside these windows, or
    # over a limit, and resumes within seconds when all is clear again.
    [schedule]
    serve = ["22:00-07:00"]             # HH:MM-HH:MM windows, may cross midnight; default: always
    timezone = "Europe/Berlin"          # IANA name; default: the machine's local time

    [idle]
    poll_interval_ms = 1000             # how often the GPU is looked at (100..60000)
    power_w_max = 300                   # pause above this power draw (W); default: no limit
    temperature_c_max = 83              # pause above this GPU temperature (°C); default: no limit
    foreign_utilization_pct_max = 10    # GPU utilisation Triton does not explain (0..100)
    foreign_memory_mib_max = 256        # GPU memory in use outside Triton's processes (MiB)
    triton_process_names = ["tritonserver"]   # processes that are Triton's own
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from idlegrid.common.errors import ConfigError
from idlegrid.node.idle_policy import MIB, IdlePolicy, parse_window

PRICE_MAX = 10**12
CONTEXT_LENGTH_MAX = 1 << 24
_TOP_KEYS = {"endpoint", "region", "provider_token_file", "labels", "models", "schedule", "idle"}
_SCHEDULE_KEYS = {"serve", "timezone"}
_IDLE_KEYS = {"poll_interval_ms", "power_w_max", "temperature_c_max", "foreign_utilization_pct_max",
              "foreign_memory_mib_max", "triton_process_names"}
WINDOWS_MAX = 24
PROCESS_NAMES_MAX = 16
_MODEL_KEYS = {"price_per_million_input_tokens", "price_per_million_output_tokens", "price_per_request",
               "context_length", "weights_file", "weights_digest", "version", "kind"}
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPricing:
    name: str
    version: str = ""
    kind: str | None = None            # "llm", "tensor", or None: read from Triton
    price_per_million_input_tokens: int = 0
    price_per_million_output_tokens: int = 0
    price_per_request: int = 0
    context_length: int = 0
    weights_file: Path | None = None
    weights_digest: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    models: Mapping[str, ModelPricing]
    endpoint: str | None = None
    region: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    provider_token_file: Path | None = None
    idle: IdlePolicy = IdlePolicy()


def _int(table: Mapping, key: str, where: str, hi: int) -> int:
    value = table.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
        raise ConfigError(f"{where}.{key} must be an integer in 0..{hi}, got {value!r}")
    return value


def _str(table: Mapping, key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}.{key} must be a string, got {value!r}")
    return value


def parse(text: str, *, base: Path | None = None, source: str = "node config") -> NodeConfig:
    """Parses the config file's text; relative paths are taken from ``base``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    unknown = data.keys() - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}")
    labels = data.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ConfigError(f"{source}: [labels] must map names to strings")
    tables = data.get("models", {})
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{source}: at least one [models.<name>] table is required")
    models = {}
    for name, table in tables.items():
        where = f"models.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {where} must be a table")
        unknown = table.keys() - _MODEL_KEYS
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)} in [{where}]")
        kind = _str(table, "kind", where)
        if kind not in (None, "llm", "tensor"):
            raise ConfigError(f"{source}: {where}.kind must be \"llm\" or \"tensor\", got {kind!r}")
        digest = _str(table, "weights_digest", where) or ""
        if digest and not _DIGEST.match(digest):
            raise ConfigError(f"{source}: {where}.weights_digest must be sha256:<64 lowercase hex>")
        weights_file = _str(table, "weights_file", where)
        path = None
        if weights_file:
            path = Path(weights_file)
            if not path.is_absolute() and base is not None:
                path = base / path
        if path is not None and digest:
            raise ConfigError(f"{source}: {where}: give weights_file or weights_digest, not both")
        models[name] = ModelPricing(
            name=name, version=_str(table, "version", where) or "", kind=kind,
            price_per_million_input_tokens=_int(table, "price_per_million_input_tokens", where, PRICE_MAX),
            price_per_million_output_tokens=_int(table, "price_per_million_output_tokens", where, PRICE_MAX),
            price_per_request=_int(table, "price_per_request", where, PRICE_MAX),
            context_length=_int(table, "context_length", where, CONTEXT_LENGTH_MAX),
            weights_file=path, weights_digest=digest)
    token_file = _str(data, "provider_token_file", "")
    return NodeConfig(models=models, endpoint=_str(data, "endpoint", ""), region=data.get("region", ""),
                      labels=labels, provider_token_file=Path(token_file) if token_file else None,
                      idle=_idle(data, source))


def _table(data: Mapping, name: str, keys: set[str], source: str) -> Mapping:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    unknown = table.keys() - keys
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)} in [{name}]")
    return table


def _idle(data: Mapping, source: str) -> IdlePolicy:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    schedule = _table(data, "schedule", _SCHEDULE_KEYS, source)
    idle = _table(data, "idle", _IDLE_KEYS, source)
    serve = schedule.get("serve", [])
    if not isinstance(serve, list) or len(serve) > WINDOWS_MAX or not all(isinstance(w, str) for w in serve):
        raise ConfigError(f"{source}: schedule.serve must be a list of at most {WINDOWS_MAX} \"HH:MM-HH:MM\"")
    try:
        windows = tuple(parse_window(w) for w in serve)
    except ValueError as e:
        raise ConfigError(f"{source}: schedule.serve: {e}") from None
    tz = None
    if (name := _str(schedule, "timezone", "schedule")) is not None:
        try:
            tz = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{source}: schedule.timezone {name!r} is not a known time zone") from None
    names = idle.get("triton_process_names", ["tritonserver"])
    if (not isinstance(names, list) or len(names) > PROCESS_NAMES_MAX
            or not all(isinstance(n, str) and 0 < len(n) <= 64 for n in names)):
        raise ConfigError(f"{source}: idle.triton_process_names must be a list of at most {PROCESS_NAMES_MAX} names")
    poll_ms = _int(idle, "poll_interval_ms", "idle", 60_000) if "poll_interval_ms" in idle else 1000
    if poll_ms < 100:
        raise ConfigError(f"{source}: idle.poll_interval_ms must be in 100..60000, got {poll_ms}")
    return IdlePolicy(
        serve=windows, timezone=tz, power_w_max=_int(idle, "power_w_max", "idle", 100_000),
        temperature_c_max=_int(idle, "temperature_c_max", "idle", 200),
        foreign_utilization_pct_max=_int(idle, "foreign_utilization_pct_max", "idle", 100)
        if "foreign_utilization_pct_max" in idle else 10,
        foreign_memory_bytes_max=(_int(idle, "foreign_memory_mib_max", "idle", 1 << 20)
                                  if "foreign_memory_mib_max" in idle else 256) * MIB,
        triton_process_names=tuple(names), poll_interval_s=poll_ms / 1000)


def load(path: Path) -> NodeConfig:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the node config {path}: {e}") from None
    return parse(text, base=path.parent, source=str(path))

