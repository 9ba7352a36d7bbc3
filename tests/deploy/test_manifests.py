"""Offline checks of the deployment in deploy/: every kustomization renders
(``kubectl kustomize``) to objects that are valid against the Kubernetes
schemas (kubernetes-validate), every service the code defines has a
Deployment, a Service and probes on the port its configuration gives it, every
pod is locked down. The compose file and the images: test_compose.py.

The list of services comes from the code (the ports in
``common/config.py``), so a new service without manifests fails here.
"""

from __future__ import annotations

import functools
import posixpath
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from idlegrid.cli.migrate import SCHEMAS
from idlegrid.common.config import Config

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TARGETS = ("base", "overlays/dev", "overlays/production")
SERVICES = tuple(Config.from_env({}).ports)
HTTP_SERVICES = frozenset({"gateway"})  # REST; every other service speaks gRPC
GRPC_SERVICES = tuple(s for s in SERVICES if s not in HTTP_SERVICES)
AUTOSCALED = ("gateway", "scheduler", "relay")  # stateless: HPA and PDB
NO_DATABASE = frozenset(s for s in SERVICES if s not in SCHEMAS)  # no state of their own: scheduler, relay
# The oldest Kubernetes the manifests target (native gRPC probes are GA since
# 1.27) and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
HEALTHCHECK = "/usr/local/lib/idlegrid/healthcheck.py"
POD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job"})


@functools.cache
def _render(target: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: it renders the kustomizations (kubectl kustomize)")
    done = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s" / target)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"kubectl kustomize {target} failed:\n{done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def render(target: str) -> tuple[dict, ...]:
    return _render(target)


def find(objects, kind: str, name: str) -> dict | None:
    for o in objects:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    return None


def pod_templates(objects) -> Iterator[tuple[dict, dict]]:
    for o in objects:
        if o["kind"] in POD_KINDS:
            yield o, o["spec"]["template"]


def containers(pod_spec: dict) -> list[dict]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def config_map_data(objects, container: dict) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps and literal env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            cm = find(objects, "ConfigMap", ref["name"])
            assert cm is not None, f"container {container['name']} reads a missing ConfigMap {ref['name']}"
            env.update(cm.get("data", {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def service_deployment(objects, service: str) -> tuple[dict, dict]:
    dep = find(objects, "Deployment", f"idlegrid-{service}")
    assert dep is not None, f"no Deployment idlegrid-{service} for the {service} service"
    [container] = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == service]
    return dep, container


def resolve_port(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def secret_refs(container: dict) -> dict[str, tuple[str, str]]:
    """Each env variable a container takes from a Secret: name -> (Secret, key)."""
    out = {}
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            out[var["name"]] = (ref["name"], ref["key"])
    return out


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_object_is_valid_against_the_kubernetes_schemas(target, version):
    """Strict schema validation: unknown fields, wrong types and missing required fields fail."""
    objects = render(target)
    assert objects, f"{target} renders nothing"
    problems = []
    for o in objects:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            where = "/".join(str(p) for p in getattr(e, "path", ()))
            problems.append(f"{o['kind']}/{o['metadata']['name']} {where}: {getattr(e, 'message', e)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("target", TARGETS)
def test_every_service_has_a_deployment_and_a_service_on_its_port(target, service):
    objects = render(target)
    dep, container = service_deployment(objects, service)
    assert container["args"] == [service, "serve"], "the image runs the service chosen by its command"
    port = Config.from_env(config_map_data(objects, container)).ports[service]
    assert port in [p["containerPort"] for p in container["ports"]]
    svc = find(objects, "Service", f"idlegrid-{service}")
    assert svc is not None, f"no Service idlegrid-{service}"
    assert selects(svc["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
    assert selects(dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
    assert [resolve_port(container, p.get("targetPort", p["port"])) for p in svc["spec"]["ports"]] == [port]


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("target", TARGETS)
def test_probes_check_the_service_on_its_configured_port(target, service):
    """Readiness, liveness and start-up probes ask the service itself: the gRPC
    health service (natively, or through the image's health check where the
    service serves TLS, which the kubelet's gRPC probe cannot speak), or the
    gateway's /readyz and /healthz."""
    objects = render(target)
    _, container = service_deployment(objects, service)
    config = Config.from_env(config_map_data(objects, container))
    port = config.ports[service]
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container.get(kind)
        assert probe, f"{service}: no {kind}"
        if service in HTTP_SERVICES:
            want = "/readyz" if kind == "readinessProbe" else "/healthz"
            assert probe["httpGet"]["path"] == want, f"{service} {kind}"
            assert resolve_port(container, probe["httpGet"]["port"]) == port, f"{service} {kind}"
        elif config.tls_cert is None:
            assert probe["grpc"]["port"] == port, f"{service} {kind}: native gRPC probe on {port}"
        else:
            assert "grpc" not in probe, f"{service} {kind}: the kubelet's gRPC probe is plaintext, the server TLS"
            command = probe["exec"]["command"]
            assert command[-2:] == [HEALTHCHECK, service], f"{service} {kind}: {command}"


@pytest.mark.parametrize("target", TARGETS)
def test_services_find_each_other_through_configuration(target):
    """IDLEGRID_*_ADDR name the Services on the ports the servers listen on,
    and the servers listen on every interface."""
    objects = render(target)
    for service in SERVICES:
        _, container = service_deployment(objects, service)
        env = config_map_data(objects, container)
        config = Config.from_env(env)
        assert config.bind_host == "0.0.0.0", f"{service}: IDLEGRID_BIND_HOST must be 0.0.0.0 in a pod"
        assert config.log_format == "json"
        for other in GRPC_SERVICES:
            assert f"IDLEGRID_{other.upper()}_ADDR" in env, f"{service}: no address for {other}"
            host, _, port = config.addrs[other].rpartition(":")
            svc = find(objects, "Service", host)
            assert svc is not None, f"{service}: {other} at {config.addrs[other]}, but no Service {host!r}"
            assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
            assert int(port) == config.ports[other]


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_runs_non_root_on_a_read_only_root_with_limits(target):
    objects = render(target)
    problems = []
    for owner, template in pod_templates(objects):
        spec, name = template["spec"], f"{owner['kind']}/{owner['metadata']['name']}"
        pod_sc = spec.get("securityContext", {})
        if spec.get("enableServiceLinks", True):
            problems.append(f"{name}: enableServiceLinks must be false (it injects IDLEGRID_*_PORT=tcp://...)")
        if spec.get("automountServiceAccountToken", True):
            problems.append(f"{name}: mounts a service account token it does not use")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(spec):
            sc = {**pod_sc, **c.get("securityContext", {})}
            where = f"{name} container {c['name']}"
            if sc.get("runAsNonRoot") is not True:
                problems.append(f"{where}: runAsNonRoot")
            if sc.get("runAsUser") == 0:
                problems.append(f"{where}: runs as uid 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities must drop ALL")
            if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile RuntimeDefault")
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in c.get("resources", {}).get(part, {}):
                        problems.append(f"{where}: no {resource} {part}")
            image = c["image"]
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"{where}: image {image} is not pinned to a tag")
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
                problems.append(f"{where}: /tmp is not an emptyDir (the root is read-only)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("service", AUTOSCALED)
@pytest.mark.parametrize("target", TARGETS)
def test_stateless_services_autoscale_and_have_a_disruption_budget(target, service):
    objects = render(target)
    dep, _ = service_deployment(objects, service)
    hpa = next((o for o in objects if o["kind"] == "HorizontalPodAutoscaler"
                and o["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]), None)
    assert hpa is not None, f"no HorizontalPodAutoscaler scales {service}"
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in dep["spec"], f"{service}: the autoscaler owns the replica count"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"
            and selects(o["spec"]["selector"]["matchLabels"], labels)]
    assert pdbs, f"no PodDisruptionBudget covers {service}"


@pytest.mark.parametrize("target", TARGETS)
def test_single_writer_services_run_one_replica(target):
    """The registry's live view is in memory: one replica, replaced, never
    doubled by a rolling update. The ledger is one writer by design."""
    objects = render(target)
    registry, _ = service_deployment(objects, "registry")
    assert registry["spec"]["replicas"] == 1
    assert registry["spec"]["strategy"]["type"] == "Recreate"
    ledger, _ = service_deployment(objects, "ledger")
    assert ledger["spec"]["replicas"] == 1


@pytest.mark.parametrize("target", TARGETS)
def test_migrations_run_as_a_job_with_the_services_image(target):
    objects = render(target)
    jobs = [o for o in objects if o["kind"] == "Job"]
    [job] = [j for j in jobs if j["spec"]["template"]["spec"]["containers"][0].get("args") == ["migrate"]]
    [container] = job["spec"]["template"]["spec"]["containers"]
    _, ledger = service_deployment(objects, "ledger")
    assert container["image"] == ledger["image"]
    env = {v["name"]: v for v in container.get("env", [])}
    assert env["IDLEGRID_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_production_mounts_the_tls_certificates_it_configures():
    """mTLS: every Deployment sets IDLEGRID_AUTH=mtls and mounts its OWN
    certificate Secret, idlegrid-<service>-tls, read-only where IDLEGRID_TLS_*
    point; no Deployment mounts another's, and no pod holds a token."""
    objects = render("overlays/production")
    for service in SERVICES:
        dep, container = service_deployment(objects, service)
        config = Config.from_env(config_map_data(objects, container))
        assert config.auth == "mtls", f"{service}: IDLEGRID_AUTH must be mtls in production"
        assert config.tls_cert and config.tls_key and config.tls_ca, f"{service}: TLS is off in production"
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        for path in (config.tls_cert, config.tls_key, config.tls_ca):
            mounts = [m for m in container["volumeMounts"] if posixpath.dirname(str(path)) == m["mountPath"]]
            assert mounts, f"{service}: nothing mounted at {path.parent}"
            assert mounts[0].get("readOnly") is True
            assert "secret" in volumes[mounts[0]["name"]], f"{service}: {path} must come from a Secret"
            assert volumes[mounts[0]["name"]]["secret"]["secretName"] == f"idlegrid-{service}-tls", \
                f"{service}: mounts {volumes[mounts[0]['name']]['secret']['secretName']}, not its own certificate"
        others = {f"idlegrid-{s}-tls" for s in SERVICES if s != service}
        mounted = {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
        assert not mounted & others, f"{service}: mounts another service's certificate {sorted(mounted & others)}"
        tokens = [v for v in secret_refs(container) if v.startswith("IDLEGRID_TOKEN_")]
        assert not tokens, f"{service}: holds tokens {tokens} under mTLS"
    for _, template in pod_templates(objects):
        for c in containers(template["spec"]):
            assert not [v for v in c.get("env", []) if v["name"].startswith("IDLEGRID_TOKEN_")]
    assert not any(o["kind"] == "Secret" for o in objects), "production must not ship credentials"
    ingress_secrets = {t["secretName"] for o in objects if o["kind"] == "Ingress" for t in o["spec"].get("tls", [])}
    assert not ingress_secrets & {f"idlegrid-{s}-tls" for s in SERVICES}, \
        "the public certificate is not a service's identity"


def test_dev_brings_its_own_database():
    objects = render("overlays/dev")
    secret = next(o for o in objects if o["kind"] == "Secret")
    assert {"database-url", *(f"database-url-{s}" for s in SCHEMAS), *(f"token-{s}" for s in SERVICES)} \
        <= secret["data"].keys()
    assert find(objects, "Service", "idlegrid-postgres") is not None


def test_production_gives_node_agents_a_public_relay_endpoint():
    """Agents behind NAT dial out to the relays: production has a public
    Service that selects the relay pods, on the relay's port for node agents
    (under mTLS the one without client certificates: agents have none)."""
    objects = render("overlays/production")
    dep, container = service_deployment(objects, "relay")
    config = Config.from_env({**config_map_data(objects, container), "IDLEGRID_TLS_CERT": "c", "IDLEGRID_TLS_KEY": "k",
                              "IDLEGRID_TLS_CA": "ca"})
    assert config.auth == "mtls"
    port = config.node_port("relay")
    svc = find(objects, "Service", "idlegrid-relay-public")
    assert svc is not None and svc["spec"]["type"] in ("LoadBalancer", "NodePort")
    assert selects(svc["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
    assert [resolve_port(container, p["targetPort"]) for p in svc["spec"]["ports"]] == [port]


@pytest.mark.parametrize("target", TARGETS)
def test_each_relay_replica_advertises_its_own_address(target):
    """The scheduler and the registry dial the replica that holds a node's
    link, so each pod records its own address, not the Service's."""
    objects = render(target)
    _, container = service_deployment(objects, "relay")
    env = {v["name"]: v for v in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["IDLEGRID_RELAY_ADVERTISE_ADDR"]["value"] == "$(POD_IP):50055"
