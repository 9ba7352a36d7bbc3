"""The NetworkPolicies and the public Ingress, rendered with kubectl
kustomize: every pod is under a default deny (ingress and egress); each
allowed edge between services is a caller in idlegrid.common.identities,
and each caller there has its edge; readiness and metrics stay inside."""

from __future__ import annotations

import pytest

from idlegrid.cli.migrate import SCHEMAS
from idlegrid.common import identities
from tests.deploy.test_manifests import (
    GRPC_SERVICES,
    POD_KINDS,
    SERVICES,
    TARGETS,
    render,
    secret_refs,
)

PORTS = {s: p for s, p in __import__("idlegrid.common.config", fromlist=["Config"]).Config.from_env({}).ports.items()}
# Reached from outside: the gateway through the Ingress, and the services whose
# methods node agents call (their node methods, in the identities table).
PUBLIC = frozenset({"gateway"} | {s for s in GRPC_SERVICES if identities.NODE in identities.callers(s)})
DATABASE_USERS = frozenset({*SCHEMAS, "migrate"})  # the schemas' owners and the migrations Job


def _policies(objects) -> list[dict]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


def _component(selector: dict) -> str | None:
    return selector.get("matchLabels", {}).get("app.kubernetes.io/component")


def _policy_of(objects, component: str) -> dict:
    found = [p for p in _policies(objects) if _component(p["spec"]["podSelector"]) == component]
    assert len(found) == 1, f"{component}: {len(found)} NetworkPolicies select it, want 1"
    return found[0]


def _peers(rules: list[dict], key: str, port: int) -> set[str | None]:
    """The components a rule list allows on ``port`` (None: any peer)."""
    out: set[str | None] = set()
    for rule in rules:
        if not any(p.get("port") == port for p in rule.get("ports", [])):
            continue
        peers = rule.get(key)
        if not peers:
            out.add(None)
        for peer in peers or ():
            out.add(_component(peer.get("podSelector", {})))
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_is_under_a_default_deny(target):
    objects = render(target)
    deny = [p for p in _policies(objects) if p["spec"]["podSelector"] == {}]
    assert deny, "no default-deny NetworkPolicy (podSelector: {})"
    assert any(set(p["spec"].get("policyTypes", ())) == {"Ingress", "Egress"} and not p["spec"].get("ingress")
               and not p["spec"].get("egress") for p in deny), "the default deny must cover ingress and egress"
    for o in objects:
        if o["kind"] in POD_KINDS:
            component = o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
            policy = _policy_of(objects, component) if component in (*SERVICES, "migrate") else None
            assert component == "postgres" or policy is not None, f"{o['metadata']['name']}: no allow policy"


@pytest.mark.parametrize("service", GRPC_SERVICES)
@pytest.mark.parametrize("target", TARGETS)
def test_each_edge_is_a_caller_in_the_identities_table(target, service):
    """Who may connect to a gRPC service is who the table lets call it (node
    agents: the public services), and each caller may connect out to it."""
    objects = render(target)
    wanted = {c for c in identities.callers(service) if c != identities.NODE}
    ingress = _peers(_policy_of(objects, service)["spec"].get("ingress", []), "from", PORTS[service])
    if service in PUBLIC:
        assert ingress == {None}, f"{service}: node agents reach it from outside: {ingress}"
    else:
        assert ingress == wanted, f"{service}: ingress from {sorted(map(str, ingress))}, table: {sorted(wanted)}"
    for caller in SERVICES:
        egress = _peers(_policy_of(objects, caller)["spec"].get("egress", []), "to", PORTS[service])
        assert (service in egress) == (caller in wanted), \
            f"{caller} -> {service}: egress {'allowed' if service in egress else 'denied'}, table disagrees"


@pytest.mark.parametrize("component", (*SERVICES, "migrate"))
@pytest.mark.parametrize("target", TARGETS)
def test_dns_and_the_database_only_where_needed(target, component):
    objects = render(target)
    egress = _policy_of(objects, component)["spec"].get("egress", [])
    assert any(p.get("port") == 53 for r in egress for p in r.get("ports", [])), f"{component}: no DNS"
    db = any(p.get("port") == 5432 for r in egress for p in r.get("ports", []))
    assert db == (component in DATABASE_USERS), f"{component}: database egress {db}"
    # ... and exactly the pods given a database credential may reach it.
    [pod] = [o for o in objects if o["kind"] in POD_KINDS
             and o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    has_url = any("IDLEGRID_DATABASE_URL" in secret_refs(c) for c in pod["spec"]["template"]["spec"]["containers"])
    assert has_url == db, f"{component}: a database URL {has_url}, database egress {db}"


def test_the_dev_database_takes_only_the_pods_with_a_database_credential():
    objects = render("overlays/dev")
    policy = _policy_of(objects, "postgres")
    allowed: set[str] = set()
    for rule in policy["spec"].get("ingress", []):
        for peer in rule.get("from", []):
            sel = peer.get("podSelector", {})
            assert "namespaceSelector" not in peer and sel, "the dev database is for this namespace's pods only"
            allowed |= {c for e in sel.get("matchExpressions", []) if e["key"] == "app.kubernetes.io/component"
                        for c in e["values"]}
            if _component(sel):
                allowed.add(_component(sel))
    assert allowed == DATABASE_USERS, f"dev PostgreSQL takes {sorted(allowed)}"


def test_the_public_ingress_routes_only_the_public_api():
    ingress = [o for o in render("overlays/production") if o["kind"] == "Ingress"]
    assert ingress
    for o in ingress:
        for rule in o["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                path = p["path"]
                assert path != "/", "the whole gateway is routed: /healthz, /readyz and /metrics with it"
                for internal in ("/healthz", "/readyz", "/metrics", "/v2/health"):
                    reaches = internal == path or (p["pathType"] == "Prefix" and internal.startswith(path + "/"))
                    assert not reaches, f"{path} ({p['pathType']}) exposes {internal}"
