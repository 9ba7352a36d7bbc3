"""The Ed25519 keys of the checkpoints: loading them (a missing, unreadable or
wrong key is a ConfigError naming the file and the variable), and the key pair
that one-machine mode keeps in $IDLEGRID_HOME. Key material is never logged;
a key is named by its id, the first 8 bytes of the sha256 of its public key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from idlegrid.common.errors import ConfigError
from idlegrid.ledger.checkpoint_settings import HOME_KEY, HOME_PUBLIC_KEY, CheckpointSettings

KEY_FILE_BYTES_MAX = 16_384
_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(public.public_bytes(*_RAW)).hexdigest()[:16]


def signing_key(settings: CheckpointSettings) -> Ed25519PrivateKey:
    """The key the service signs with: IDLEGRID_LEDGER_CHECKPOINT_KEY, or the
    home key pair (created on first start) where the settings allow it."""
    if settings.key is not None:
        return load_private(settings.key, "IDLEGRID_LEDGER_CHECKPOINT_KEY")
    if not settings.home_key_allowed:
        raise ConfigError("IDLEGRID_LEDGER_CHECKPOINT_KEY is not set: ledger checkpoints are required and the "
                          "database is not the embedded one, so no key is kept in IDLEGRID_HOME")
    return home_key_pair(settings.home)


def public_keys(settings: CheckpointSettings, *, required: bool) -> dict[str, Ed25519PublicKey]:
    """The keys ``verify`` accepts, by key id. Files named in the environment
    must load; the home public key is optional unless ``required``."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in settings.public_key_paths():
        if not settings.public_keys and not required and not path.exists():
            continue
        pub = load_public(path, "IDLEGRID_LEDGER_CHECKPOINT_PUBLIC_KEY")
        keys[key_id(pub)] = pub
    return keys


def load_private(path: Path, variable: str) -> Ed25519PrivateKey:
    data = _read(path, variable)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"{variable}: {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{variable}: {path} is not an Ed25519 key")
    return key


def load_public(path: Path, variable: str) -> Ed25519PublicKey:
    data = _read(path, variable)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{variable}: {path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{variable}: {path} is not an Ed25519 public key")
    return key


def home_key_pair(home: Path) -> Ed25519PrivateKey:
    """The key pair in ``home``: the private key (mode 0600) and its public
    key beside it, created once (another process may win the race)."""
    path, pub_path = home / HOME_KEY, home / HOME_PUBLIC_KEY
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
    key = load_private(path, f"the ledger's checkpoint key in IDLEGRID_HOME ({home})")
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        current = pub_path.read_bytes()
    except FileNotFoundError:
        current = None
    if current != public_pem:
        tmp = pub_path.with_name(f".{pub_path.name}.{os.getpid()}")
        tmp.write_bytes(public_pem)
        os.replace(tmp, pub_path)
    return key


def _read(path: Path, variable: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(KEY_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        raise ConfigError(f"{variable}: no key file at {path}") from None
    except OSError as e:
        raise ConfigError(f"{variable}: cannot read {path}: {e.strerror}") from None
    if len(data) > KEY_FILE_BYTES_MAX or not data.strip():
        raise ConfigError(f"{variable}: {path} is {'empty' if not data.strip() else 'too large'}; "
                          "expected a PEM key")
    return data
