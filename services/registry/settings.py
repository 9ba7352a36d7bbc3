"""The registry's own settings: intervals, deadlines and limits, with safe,
named defaults. ``idlegrid registry serve`` sets a few from its flags and the
direct-endpoint policy from the environment (:meth:`RegistrySettings.from_env`,
read once at start-up); tests pass their own.

| variable | default | meaning |
|---|---|---|
| IDLEGRID_REGISTRY_DIRECT_ENDPOINTS | off | on: nodes may register a direct Triton endpoint (datacenter providers) |
| IDLEGRID_REGISTRY_DIRECT_ALLOW_CIDRS | (empty) | comma-separated CIDRs where private addresses are allowed |
| IDLEGRID_REGISTRY_DIRECT_REQUIRE_TLS | off | on: the registry speaks TLS to direct endpoints (production) |
| IDLEGRID_REGISTRY_PROVIDER_NODES_MAX | 20000 | live (not OFFLINE) nodes per provider |
| IDLEGRID_REGISTRY_PROVIDER_REGISTRATIONS_PER_MINUTE_MAX | 12000 | registrations per provider in any minute |
| IDLEGRID_REGISTRY_VERIFICATIONS_PER_PROVIDER_MAX | 4 | verifications of one provider at once (of verifications_max 16) |
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from idlegrid.common.errors import ConfigError

ALLOW_CIDRS_MAX = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrySettings:
    # Leases: the registry tells each agent the interval; a node that sends no
    # heartbeat for lease_intervals intervals goes OFFLINE on its own.
    heartbeat_interval_ms: int = 5_000
    lease_intervals: int = 3
    sweep_interval_ms: int = 250          # how often leases are checked
    load_report_interval_ms: int = 1_000  # how often watchers get coalesced loads
    # Verification deadlines: each readiness/metadata/config call, each canary
    # inference, and the whole verification of one node.
    verify_call_timeout_ms: int = 5_000
    canary_timeout_ms: int = 30_000
    verify_timeout_ms: int = 60_000
    verifications_max: int = 16           # concurrent verifications (JOINING waits for a slot)
    verifications_per_provider_max: int = 4  # of one provider at once; providers are served round-robin
    # Benchmarks and tests only: nodes become READY without the registry
    # contacting their Triton (reason VERIFICATION_SKIPPED). Off by default; no
    # request can turn it on.
    skip_verification: bool = False
    # Limits.
    nodes_max: int = 200_000
    # Per-provider quotas (RESOURCE_EXHAUSTED names the one reached): nodes
    # not OFFLINE, and registrations (new nodes and registering again) in
    # any sliding minute.
    # Sized so that one provider may hold a tenth of the registry and a whole
    # datacenter may (re)join at once (bench/registry.py registers 10,100
    # nodes of one provider); operators tighten them from the environment.
    provider_nodes_max: int = 20_000
    provider_registrations_per_minute_max: int = 12_000
    watchers_max: int = 1_000
    watch_buffer_max: int = 10_000        # changes kept for watchers that resume
    watcher_queue_max: int = 10_000       # messages queued per watcher before it is dropped
    offline_retention_s: int = 3_600      # OFFLINE nodes leave the live view after this
    write_batch_max: int = 1_000          # state changes per database statement
    # Direct endpoints (an operator opt-in; off: every node is reached through
    # its relay link). On: public addresses only, except inside
    # direct_allow_cidrs; resolved once and pinned; unique across live nodes.
    direct_endpoints: bool = False
    direct_allow_cidrs: tuple[str, ...] = ()
    direct_require_tls: bool = False
    resolve_timeout_ms: int = 5_000       # resolving a direct endpoint's host

    def __post_init__(self) -> None:
        bounds = {
            "heartbeat_interval_ms": (50, 600_000),
            "lease_intervals": (2, 100),
            "sweep_interval_ms": (10, 60_000),
            "load_report_interval_ms": (10, 60_000),
            "verify_call_timeout_ms": (10, 600_000),
            "canary_timeout_ms": (10, 600_000),
            "verify_timeout_ms": (10, 3_600_000),
            "verifications_max": (1, 1_000),
            "verifications_per_provider_max": (1, 1_000),
            "nodes_max": (1, 10_000_000),
            "provider_nodes_max": (1, 10_000_000),
            "provider_registrations_per_minute_max": (1, 1_000_000),
            "watchers_max": (1, 100_000),
            "watch_buffer_max": (1, 10_000_000),
            "watcher_queue_max": (1, 10_000_000),
            "offline_retention_s": (0, 365 * 86_400),
            "write_batch_max": (1, 100_000),
            "resolve_timeout_ms": (10, 60_000),
        }
        for name, (lo, hi) in bounds.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ConfigError(f"registry setting {name} must be in [{lo}, {hi}], got {value}")
        if len(self.direct_allow_cidrs) > ALLOW_CIDRS_MAX:
            raise ConfigError(f"registry setting direct_allow_cidrs holds at most {ALLOW_CIDRS_MAX} networks")
        for cidr in self.direct_allow_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"registry setting direct_allow_cidrs: {cidr!r} is not a CIDR") from None

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides) -> RegistrySettings:
        """The direct-endpoint policy from the environment (see the table
        above), with ``overrides`` (the serve command's flags)."""
        direct = {
            "direct_endpoints": _on_off(env, "IDLEGRID_REGISTRY_DIRECT_ENDPOINTS"),
            "direct_require_tls": _on_off(env, "IDLEGRID_REGISTRY_DIRECT_REQUIRE_TLS"),
            "direct_allow_cidrs": tuple(c.strip() for c in env.get("IDLEGRID_REGISTRY_DIRECT_ALLOW_CIDRS", "")
                                        .split(",") if c.strip()),
        }
        quotas = {}
        for name in ("provider_nodes_max", "provider_registrations_per_minute_max",
                     "verifications_per_provider_max"):
            raw = env.get(f"IDLEGRID_REGISTRY_{name.upper()}", "").strip()
            if raw:
                if not raw.isdigit():
                    raise ConfigError(f"IDLEGRID_REGISTRY_{name.upper()} must be a positive integer, got {raw!r}")
                quotas[name] = int(raw)
        return cls(**{**direct, **quotas, **overrides})

    @property
    def lease_s(self) -> float:
        return self.heartbeat_interval_ms * self.lease_intervals / 1000.0


def _on_off(env: Mapping[str, str], name: str) -> bool:
    value = (env.get(name) or "off").strip().lower()
    if value not in ("on", "off"):
        raise ConfigError(f"{name} must be on or off, got {value!r}")
    return value == "on"
