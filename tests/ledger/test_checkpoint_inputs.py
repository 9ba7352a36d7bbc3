"""Bad input to the checkpoints meets a clear error and leaves nothing
behind: settings, key files, the log file (torn or corrupt), and log lines
that are not valid checkpoints under the accepted keys."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from idlegrid.common.errors import ConfigError
from idlegrid.ledger import checkpoint_audit
from idlegrid.ledger import service as ledger_service
from idlegrid.ledger.checkpoint_keys import home_key_pair, key_id, signing_key
from idlegrid.ledger.checkpoint_log import LINE_BYTES_MAX, Checkpoint, CheckpointLog, parse
from idlegrid.ledger.checkpoint_settings import CheckpointSettings
from idlegrid.ledger.checkpointer import Checkpointer
from tests.harness.basics import TOKEN, make_config, new_database


def _settings(tmp_path, **kw) -> CheckpointSettings:
    return CheckpointSettings.from_env({}, home=tmp_path, embedded=kw.pop("embedded", True), **kw)


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.mark.parametrize("env, message", [
    ({"IDLEGRID_LEDGER_CHECKPOINTS": "sometimes"}, "IDLEGRID_LEDGER_CHECKPOINTS must be one of"),
    ({"IDLEGRID_LEDGER_CHECKPOINT_EVERY_S": "soon"}, "IDLEGRID_LEDGER_CHECKPOINT_EVERY_S must be a number"),
    ({"IDLEGRID_LEDGER_CHECKPOINT_EVERY_S": "nan"}, "finite"),
    ({"IDLEGRID_LEDGER_CHECKPOINT_EVERY_S": "0"}, "IDLEGRID_LEDGER_CHECKPOINT_EVERY_S must be in"),
    ({"IDLEGRID_LEDGER_CHECKPOINT_EVERY_S": "30", "IDLEGRID_LEDGER_CHECKPOINT_LAG_MAX_S": "30"},
     "IDLEGRID_LEDGER_CHECKPOINT_LAG_MAX_S must be above"),
])
def test_bad_settings_name_the_variable(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        CheckpointSettings.from_env(env, home=tmp_path, embedded=True)


@pytest.mark.parametrize("content, message", [
    (None, "no key file at"),
    (b"", "is empty"),
    (b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n", "not an unencrypted PEM private key"),
    ("rsa", "not an Ed25519 key"),
])
def test_unusable_signing_key_is_a_config_error(tmp_path, content, message):
    """A missing, empty, garbled or non-Ed25519 key file: a ConfigError that
    names the variable and the file, never the key material."""
    path = tmp_path / "signing.pem"
    if content == "rsa":
        path.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as e:
        signing_key(_settings(tmp_path, key=path, mode="required"))
    assert "IDLEGRID_LEDGER_CHECKPOINT_KEY" in str(e.value) and str(path) in str(e.value)


async def test_required_without_a_key_refuses_to_start_and_touches_nothing(pg_admin_url, tmp_path):
    """In a cluster (not the embedded database) with checkpoints required and
    no key, the ledger does not start, and the database is left untouched."""
    db_url = await new_database(pg_admin_url)
    settings = _settings(tmp_path, mode="required", embedded=False)
    with pytest.raises(ConfigError, match="IDLEGRID_LEDGER_CHECKPOINT_KEY is not set"):
        await ledger_service.start(make_config(tmp_path), port=0, database_url=db_url, checkpoints=settings)
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'ledger'") == 0
    finally:
        await conn.close()
    assert not (tmp_path / "ledger-checkpoint.key").exists()


def test_serve_command_reports_a_missing_key_clearly(tmp_path):
    """``idlegrid ledger serve`` with IDLEGRID_LEDGER_CHECKPOINTS=required and
    a key path that does not exist exits 2 with the variable's name."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("IDLEGRID_")},
           "IDLEGRID_HOME": str(tmp_path), "IDLEGRID_SERVICE_TOKEN": TOKEN,
           "IDLEGRID_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
           "IDLEGRID_LEDGER_CHECKPOINTS": "required",
           "IDLEGRID_LEDGER_CHECKPOINT_KEY": str(tmp_path / "missing.pem")}
    out = subprocess.run([sys.executable, "-m", "idlegrid.cli.main", "ledger", "serve"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "IDLEGRID_LEDGER_CHECKPOINT_KEY: no key file at" in out.stderr, out.stderr


def test_verify_required_without_a_public_key_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="IDLEGRID_LEDGER_CHECKPOINT_PUBLIC_KEY: no key file"):
        checkpoint_audit.load(_settings(tmp_path, mode="required"))
    assert checkpoint_audit.load(_settings(tmp_path)) is None  # auto: not checked, said so by the CLI


def test_home_key_pair_is_created_once_with_mode_0600(tmp_path):
    key = home_key_pair(tmp_path)
    assert oct(os.stat(tmp_path / "ledger-checkpoint.key").st_mode & 0o777) == "0o600"
    assert key_id(home_key_pair(tmp_path).public_key()) == key_id(key.public_key())


def _signed(key, n: int, batch: int) -> Checkpoint:
    return Checkpoint(n, batch, batch * 10, bytes([n]) * 32, datetime.now(UTC), key_id(key.public_key())).signed(key)


def test_checkpoints_signed_by_another_key_fail_verification(tmp_path):
    """A log whose lines verify under one key, checked with another public
    key, reports every line as signed by a key that is not accepted."""
    signer, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"".join(_signed(signer, n, n).line() for n in (1, 2)))
    pub = tmp_path / "other.pub"
    pub.write_bytes(other.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    anchors = checkpoint_audit.load(_settings(tmp_path, public_keys=(pub,), log=log))
    assert anchors is not None and anchors.valid == []
    assert len(anchors.problems) == 2 and all("not an accepted public key" in p for p in anchors.problems)


@pytest.mark.parametrize("mutate, message", [
    (lambda line: line.replace(b'"batch":2', b'"batch":3'), "bad signature"),
    (lambda line: line.replace(b'"n":2', b'"n":true'), "n is not a non-negative"),
    (lambda line: line.replace(b'"v":1', b'"v":2'), "not a version 1"),
    (lambda line: b"[" * 100_000, "longer than"),
    (lambda line: line[:-20], "not JSON"),
    (lambda line: line.replace(b'+00:00"', b'Z"'), "canonical"),
])
def test_altered_or_malformed_lines_are_named(tmp_path, mutate, message):
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "k.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    good = _signed(key, 1, 1).line()
    log = tmp_path / "log.jsonl"
    log.write_bytes(good + mutate(_signed(key, 2, 2).line().rstrip(b"\n")) + b"\n")
    anchors = checkpoint_audit.load(_settings(tmp_path, public_keys=(pub,), log=log))
    assert anchors is not None and [c.n for c in anchors.valid] == [1]
    assert len(anchors.problems) == 1 and "line 2" in anchors.problems[0], anchors.problems
    assert message in anchors.problems[0], anchors.problems


async def test_torn_last_line_is_cut_and_a_corrupt_one_refused(tmp_path):
    """A crash mid-append leaves a line without its newline: reopening the
    log cuts it off. A complete last line that is not a checkpoint stops the
    service from appending (a ConfigError at start)."""
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "log.jsonl"
    first = _signed(key, 1, 1)
    path.write_bytes(first.line() + _signed(key, 2, 2).line()[:40])
    assert CheckpointLog(path).open_for_append() == first
    assert path.read_bytes() == first.line()
    path.write_bytes(first.line() + b"garbage\n")
    with pytest.raises(ConfigError, match=r"IDLEGRID_LEDGER_CHECKPOINT_LOG\): .*last line is not a checkpoint"):
        await Checkpointer(_settings(tmp_path, log=path), key).open()
    assert parse(first.line().rstrip(b"\n")) == first
    assert len(first.line()) < LINE_BYTES_MAX
