"""Secrets kept on disk in the home directory (one-machine mode only)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def home_service_token(home: Path) -> str:
    """Returns the service token in ``home``, creating it (mode 0600) once."""
    path = home / "service-token"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token
