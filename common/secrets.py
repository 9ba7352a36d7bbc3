"""Secrets kept on disk in the home directory (one-machine mode only): one
token per service identity, ``$IDLEGRID_HOME/tokens/<identity>``, mode 0600,
created once. A file appears whole or not at all (written aside, then
linked into place), so an empty or short token file is damage: it is refused
with its path, never taken as a credential."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from idlegrid.common.auth import check_token
from idlegrid.common.errors import ConfigError
from idlegrid.common.identities import IDENTITIES

TOKENS_DIR = "tokens"


def _read(path: Path) -> str:
    token = path.read_text().strip()
    try:
        return check_token(str(path), token)
    except ValueError as e:
        raise ConfigError(f"{e} (delete the file to have a new one made)") from None


def home_token(home: Path, identity: str) -> str:
    """The token of ``identity`` kept in ``home``, created (0600) on first use."""
    if identity not in IDENTITIES:
        raise ConfigError(f"unknown identity {identity!r}; known: {', '.join(IDENTITIES)}")
    folder = home / TOKENS_DIR
    path = folder / identity
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    aside = folder / f".{identity}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(aside, path)  # fails if another process won the race
        except FileExistsError:
            return _read(path)
    finally:
        aside.unlink(missing_ok=True)
    return token
