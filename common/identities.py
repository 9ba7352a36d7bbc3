"""Who may call what: the one table of service identities and, per gRPC
method, the identities allowed to call it. The RPC policy
(idlegrid.common.interceptors) enforces it on every server; the deploy tests
check the NetworkPolicies against it (each allowed edge is a caller here).

Identities. Each service process presents its own (a token kept per identity
in one-machine mode, a client certificate in production), never another's:

| identity | who |
|---|---|
| ledger, registry, scheduler, metering, gateway, relay | that service's processes |
| operator | people running the platform: the ``idlegrid`` CLI and the test suite; never given to a pod |

``NODE`` is not an identity: it marks the methods that provider nodes call
with their own node token, which the handler checks (the registry's node
methods, the relay's Link). Node tokens authenticate nowhere else.

Who calls whom (grep the stubs in services/*, gateway/, cli/, bench/):

| caller | calls |
|---|---|
| gateway | ledger (accounts, reads, TopUp and Payout from its admin path), registry (providers, nodes, watch), scheduler (inference), metering (usage and earnings reads) |
| scheduler | ledger (Reserve, Settle, SettleBatch, Release), metering (RecordUsage, RecordUsageBatch, OpenLease, CloseLease, RecordCheckResult), registry (WatchNodes, GetNode), relay (KServe, forwarded to nodes) |
| metering | ledger (Settle, SettleBatch: the settlement worker; ReleaseEarnings, VoidEarnings: the earnings worker; OpenLease, ClearWindow, ReleaseAggregates, VoidAggregates: leases and clearing), registry (WatchNodes: suspended nodes' earnings are voided) |
| registry | relay (KServe canaries that verify a node) |
| relay | registry (AttachLink, DetachLink) |
| node agent | registry (node methods), relay (Link), with its node token |

The relay's identity reaches no ledger method at all, nor does a node's.
"""

from __future__ import annotations

LEDGER, REGISTRY, SCHEDULER, METERING, GATEWAY, RELAY = (
    "ledger", "registry", "scheduler", "metering", "gateway", "relay")
OPERATOR = "operator"
SERVICES = (LEDGER, REGISTRY, SCHEDULER, METERING, GATEWAY, RELAY)
IDENTITIES = (*SERVICES, OPERATOR)
NODE = "node"  # node methods: the handler authenticates the node token

KSERVE_SERVICE = "inference.GRPCInferenceService"

_G, _S, _M, _O = frozenset({GATEWAY}), frozenset({SCHEDULER}), frozenset({METERING}), frozenset({OPERATOR})


def _table(service: str, methods: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    # The operator may call every service method; a node method is the node's alone.
    return {f"/{service}/{m}": who if who == {NODE} else who | _O for m, who in methods.items()}


ALLOWED: dict[str, frozenset[str]] = {
    **_table("idlegrid.ledger.v1.LedgerService", {
        "CreateAccounts": _G, "LookupAccounts": _G, "ResolveAccount": _G,
        "GetAccountTransfers": _G, "GetAccountBalances": _G,
        "LookupTransfers": _G | _M,  # metering: whether a lease stuck OPENING was held (clearing)
        "TopUp": _G, "Payout": _G,  # the gateway's admin path
        "Reserve": _S, "Release": _S, "Settle": _S | _M, "SettleBatch": _S | _M,
        "ReleaseEarnings": _M, "VoidEarnings": _M,  # held earnings: metering's release and void workers
        # Credit leases and batched clearing: metering opens and clears leases for the schedulers.
        "OpenLease": _M, "ClearWindow": _M, "ReleaseAggregates": _M, "VoidAggregates": _M,
        "CreateTransfers": frozenset(),  # raw transfers: the operator only (benchmarks, repairs)
    }),
    **_table("idlegrid.registry.v1.RegistryService", {
        "CreateProvider": _G, "ListNodes": _G, "GetNode": _G | _S, "WatchNodes": _G | _S | _M,
        "AttachLink": frozenset({RELAY}), "DetachLink": frozenset({RELAY}),
        **{m: frozenset({NODE}) for m in ("RegisterNode", "Heartbeat", "Drain", "Deregister", "SetPaused")},
        # The operator controls and the catalog: the gateway's admin path.
        **{m: _G for m in ("PutCatalogModel", "RemoveCatalogModel", "SetSuspended", "SetProviderTrusted",
                           "RotateProviderToken", "RevokeProviderToken", "SetEndpointBanned",
                           "ListOperatorActions")},
        "ListCatalog": _G | _S,
        "ReportCheck": _S,  # spot-check verdicts and token-count disagreements
    }),
    **_table("idlegrid.scheduler.v1.SchedulerService", {"Infer": _G, "InferStream": _G, "GetModelMetadata": _G}),
    **_table("idlegrid.metering.v1.MeteringService", {
        "RecordUsage": _S, "RecordUsageBatch": _S, "OpenLease": _S, "CloseLease": _S, "GetJob": _G, "ListUsage": _G, "GetUsage": _G, "GetEarnings": _G,
        "RecordCheckResult": _S,  # the spot-checker's verdict per job
        "VoidNodeEarnings": frozenset(),  # an operator's decision: the operator only
    }),
    **_table("idlegrid.relay.v1.RelayService", {"Link": frozenset({NODE})}),
    # The relay's KServe face: only what dispatch and verification forward to nodes.
    **_table(KSERVE_SERVICE, {m: _S | frozenset({REGISTRY}) for m in (
        "ServerLive", "ServerReady", "ModelReady", "ModelMetadata", "ModelConfig", "ModelInfer", "ModelStreamInfer")}),
}


def allowed(method: str) -> frozenset[str]:
    """The identities that may call ``method`` (its full name); none when the
    table does not name it (refused for everyone)."""
    return ALLOWED.get(method, frozenset())


def is_node_method(method: str) -> bool:
    return ALLOWED.get(method) == {NODE}


def callers(service: str) -> frozenset[str]:
    """Every identity (NODE included) that calls some method of ``service``
    (a package name: ledger, registry, scheduler, metering, relay), the
    operator left out: the edges a NetworkPolicy must allow."""
    prefix = "/inference." if service == RELAY else f"/idlegrid.{service}.v1."
    out: set[str] = set()
    for method, who in ALLOWED.items():
        if method.startswith(prefix) or (service == RELAY and method.startswith("/idlegrid.relay.v1.")):
            out |= who
    return frozenset(out - _O)


def accepted(service: str) -> frozenset[str]:
    """The service identities whose credentials ``service``'s server must know."""
    return frozenset(callers(service) - {NODE}) | _O
