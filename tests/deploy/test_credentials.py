"""Offline checks of least privilege in deploy/: every pod holds its own
credential and only the tokens of the callers its server accepts (token
mode), or its own certificate (production, mTLS); no pod holds the
operator's; each service connects as its own database role, and only the
migrations Job holds the admin URL and the role passwords."""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote, urlsplit

import pytest

from idlegrid.cli.migrate import SCHEMAS
from idlegrid.common import db, identities
from idlegrid.common.config import Config
from tests.deploy.test_manifests import (
    NO_DATABASE,
    SERVICES,
    TARGETS,
    config_map_data,
    containers,
    find,
    pod_templates,
    render,
    secret_refs,
    service_deployment,
)

SECRET_VARS = re.compile(r"IDLEGRID_(DATABASE_URL|SERVICE_TOKEN|TOKEN_\w+|DB_PASSWORD_\w+)")
OPERATOR_CREDENTIALS = frozenset({"IDLEGRID_SERVICE_TOKEN", f"IDLEGRID_TOKEN_{identities.OPERATOR.upper()}"})




def expected_tokens(service: str) -> set[str]:
    """Token mode: a service's own identity, and the callers its server
    verifies (idlegrid.common.identities), never the operator."""
    return {service} | (identities.accepted(service) - {identities.OPERATOR})


def secrets_name(objects) -> str:
    """The Secret idlegrid-secrets as the pods name it (the dev overlay's
    generator appends a content hash)."""
    generated = [o["metadata"]["name"] for o in objects if o["kind"] == "Secret"
                 and o["metadata"]["name"].startswith("idlegrid-secrets")]
    return generated[0] if generated else "idlegrid-secrets"


def secret_value(objects, name: str, key: str) -> str | None:
    secret = find(objects, "Secret", name)
    if secret is None:  # base and production expect an existing Secret
        return None
    assert key in secret.get("data", {}), f"Secret {name} has no key {key}"
    return base64.b64decode(secret["data"][key]).decode()


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_come_from_a_secret_never_from_configuration(target):
    """Credentials come from a Secret, key by key: never from a ConfigMap or a
    literal, and no pod takes a whole Secret (envFrom), which would hand it
    every other service's credentials."""
    objects = render(target)
    for cm in (o for o in objects if o["kind"] == "ConfigMap"):
        leaked = [k for k in cm.get("data", {}) if SECRET_VARS.fullmatch(k)]
        assert not leaked, f"ConfigMap {cm['metadata']['name']} holds secrets {leaked}"
    for owner, template in pod_templates(objects):
        for c in containers(template["spec"]):
            where = f"{owner['metadata']['name']} container {c['name']}"
            assert not [s for s in c.get("envFrom", []) if "secretRef" in s], f"{where}: envFrom a whole Secret"
            literal = [v["name"] for v in c.get("env", []) if SECRET_VARS.fullmatch(v["name"]) and "valueFrom" not in v]
            assert not literal, f"{where}: {literal} written in the manifest"
            for name, key in secret_refs(c).values():
                secret_value(objects, name, key)  # the key exists where the Secret is generated


@pytest.mark.parametrize("target", TARGETS)
def test_no_pod_has_the_operator_token(target):
    """The operator's token (IDLEGRID_SERVICE_TOKEN, from which every identity's
    token derives, or IDLEGRID_TOKEN_OPERATOR) is the people's, never a pod's."""
    objects = render(target)
    for owner, template in pod_templates(objects):
        for c in containers(template["spec"]):
            names = {v["name"] for v in c.get("env", [])}
            keys = {key for _, key in secret_refs(c).values()}
            where = f"{owner['metadata']['name']} container {c['name']}"
            assert not names & OPERATOR_CREDENTIALS, f"{where}: has {sorted(names & OPERATOR_CREDENTIALS)}"
            assert not keys & {"service-token", "token-operator"}, f"{where}: reads the operator's token"
    for secret in (o for o in objects if o["kind"] == "Secret"):
        assert not secret.get("data", {}).keys() & {"service-token", "token-operator"}, \
            f"Secret {secret['metadata']['name']} holds the operator's token"


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("target", ("base", "overlays/dev"))
def test_token_mode_gives_each_service_its_own_token_and_its_callers_only(target, service):
    """Each service presents its own token and knows the tokens of the
    callers its server accepts, nothing more: IDLEGRID_TOKEN_<X> from the key
    token-<x>, so a pod never holds a token it has no use for, and the
    caller and the server read the same key."""
    objects = render(target)
    _, container = service_deployment(objects, service)
    refs = secret_refs(container)
    tokens = {v.removeprefix("IDLEGRID_TOKEN_").lower() for v in refs if v.startswith("IDLEGRID_TOKEN_")}
    assert tokens == expected_tokens(service), f"{service}: tokens {sorted(tokens)}"
    for identity in tokens:
        assert refs[f"IDLEGRID_TOKEN_{identity.upper()}"] == (secrets_name(objects), f"token-{identity}")
    config = Config.from_env({**config_map_data(objects, container),
                              **{v: f"stand-in-{key}" for v, (_, key) in refs.items()}})
    assert config.auth == "token"
    # The server's guard and the client's token come from the environment, never
    # from a token made up in the pod's $IDLEGRID_HOME (which no caller would know).
    assert set(config.tokens) == expected_tokens(service)
    if target == "overlays/dev":
        values = {i: secret_value(objects, secrets_name(objects), f"token-{i}") for i in identities.SERVICES}
        assert len(set(values.values())) == len(values), "two identities share a token"


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("target", TARGETS)
def test_each_service_connects_as_its_own_database_role(target, service):
    """A service that owns a schema reads its URL from database-url-<schema>,
    the URL of its role idlegrid_<schema> (DML on its own schema only); the
    scheduler and the relay get no database URL at all; no service migrates."""
    objects = render(target)
    _, container = service_deployment(objects, service)
    refs = secret_refs(container)
    env = config_map_data(objects, container)
    assert Config.from_env(env).migrate_on_start is False, f"{service}: IDLEGRID_MIGRATE_ON_START must be 0"
    db_vars = {v for v in refs if v == "IDLEGRID_DATABASE_URL" or v.startswith("IDLEGRID_DB_PASSWORD_")}
    assert "IDLEGRID_DATABASE_URL" not in env and not [v for v in env if v.startswith("IDLEGRID_DB_PASSWORD_")]
    if service in NO_DATABASE:
        assert not db_vars, f"{service} holds no state, so no database credential: {sorted(db_vars)}"
        return
    assert db_vars == {"IDLEGRID_DATABASE_URL"}, f"{service}: {sorted(db_vars)}"
    name, key = refs["IDLEGRID_DATABASE_URL"]
    assert key == f"database-url-{service}", f"{service} reads {key}, not its own role's URL"
    url = secret_value(objects, name, key)
    if url is not None:
        assert urlsplit(url).username == db.role_name(service), f"{service}: connects as {urlsplit(url).username}"
        password = secret_value(objects, name, f"db-password-{service}")
        assert unquote(urlsplit(url).password or "") == password, \
            f"{service}: its URL's password is not the one the migrations Job sets on {db.role_name(service)}"


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_migrations_job_has_the_admin_url_and_the_role_passwords(target):
    objects = render(target)
    admin_keys = {"database-url"} | {f"db-password-{s}" for s in SCHEMAS}
    for owner, template in pod_templates(objects):
        for c in containers(template["spec"]):
            keys = {key for _, key in secret_refs(c).values()}
            if c.get("args") == ["migrate"]:
                refs = secret_refs(c)
                assert refs["IDLEGRID_DATABASE_URL"] == (secrets_name(objects), "database-url")
                for schema in SCHEMAS:
                    assert refs[f"IDLEGRID_DB_PASSWORD_{schema.upper()}"] == (secrets_name(objects), f"db-password-{schema}")
                assert not [k for k in keys if k.startswith("token-")], "the migrations Job calls no service"
                url = secret_value(objects, secrets_name(objects), "database-url")
                if url is not None:
                    assert urlsplit(url).username not in {db.role_name(s) for s in SCHEMAS}, \
                        "the migrations Job needs an owner of the schemas, not a service's role"
            else:
                assert not keys & admin_keys, \
                    f"{owner['metadata']['name']}: {sorted(keys & admin_keys)} belong to the migrations Job only"
