"""The relay's own settings: windows, bounds, limits and intervals, with
safe, named defaults. ``idlegrid relay serve`` sets a few from its flags;
tests and the bench pass their own."""

from __future__ import annotations

from dataclasses import dataclass

from idlegrid.common.errors import ConfigError

# The methods of inference.GRPCInferenceService that reach a node; nothing
# else is ever forwarded (no repository, shared-memory, trace or log calls).
FORWARDED_UNARY = ("ServerLive", "ServerReady", "ModelReady", "ModelMetadata", "ModelConfig", "ModelInfer")
FORWARDED_STREAM = ("ModelStreamInfer",)
KSERVE_SERVICE = "inference.GRPCInferenceService"


@dataclass(frozen=True, slots=True, kw_only=True)
class RelaySettings:
    # Flow control: replies the node may send per call before it waits for
    # credit; the relay buffers at most this many replies for a call.
    window_replies: int = 16
    # Bounds on what a node may send for one call; a caller's own bounds
    # (idlegrid-reply-bytes-max / idlegrid-replies-max) can only lower them.
    reply_bytes_max: int = 64 * 1024 * 1024
    replies_max: int = 100_000
    # Limits.
    links_max: int = 100_000            # links one replica holds
    calls_per_link_max: int = 256        # concurrent calls on one link
    inputs_per_call_max: int = 1_024     # request messages of one streaming call
    link_queue_max: int = 4_096          # messages queued to one agent
    # Liveness: the relay pings every link; one that does not answer within
    # pong_timeout_ms is closed (its calls fail UNAVAILABLE).
    ping_interval_ms: int = 10_000
    pong_timeout_ms: int = 30_000
    hello_timeout_ms: int = 10_000       # a new link must say Hello within this
    registry_timeout_ms: int = 10_000    # AttachLink / DetachLink deadline

    def __post_init__(self) -> None:
        bounds = {
            "window_replies": (1, 4_096),
            "reply_bytes_max": (1, 1 << 40),
            "replies_max": (1, 100_000_000),
            "links_max": (1, 10_000_000),
            "calls_per_link_max": (1, 100_000),
            "inputs_per_call_max": (1, 1_000_000),
            "link_queue_max": (16, 10_000_000),
            "ping_interval_ms": (10, 3_600_000),
            "pong_timeout_ms": (10, 3_600_000),
            "hello_timeout_ms": (10, 600_000),
            "registry_timeout_ms": (10, 600_000),
        }
        for name, (lo, hi) in bounds.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ConfigError(f"relay setting {name} must be in [{lo}, {hi}], got {value}")
