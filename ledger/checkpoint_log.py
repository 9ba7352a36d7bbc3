"""A checkpoint and the append-only log that holds them, one JSON object per
line, outside the database:

    {"v": 1, "n": 7, "batch": 412, "last_seq": 90311, "hash": "<64 hex>",
     "at": "2025-01-02T03:04:05.123456+00:00", "key": "<16 hex>", "sig": "<base64>"}

``n`` counts checkpoints from 1 without gaps, ``at`` is the signer's clock,
``key`` the signing key's id. The Ed25519 signature covers a domain tag and
the canonical JSON of every other field. Appends are fsync'd; a torn last
line (a crash mid-write, never fsync'd) is cut off when the writer reopens
the log. Lines are parsed as untrusted input: anything malformed is a
``ValueError`` that names what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DOMAIN = b"idlegrid.ledger.checkpoint.v1\n"
LINE_BYTES_MAX = 1024
_INT_MAX = 2**63 - 1
_TAIL_BYTES = 4 * LINE_BYTES_MAX


@dataclass(frozen=True, slots=True)
class Checkpoint:
    n: int
    batch: int
    last_seq: int
    hash: bytes
    at: datetime
    key: str
    sig: bytes = b""

    def payload(self) -> bytes:
        body = {"v": 1, "n": self.n, "batch": self.batch, "last_seq": self.last_seq, "hash": self.hash.hex(),
                "at": self.at.isoformat(), "key": self.key}
        return DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: Ed25519PrivateKey) -> Checkpoint:
        return Checkpoint(self.n, self.batch, self.last_seq, self.hash, self.at, self.key, key.sign(self.payload()))

    def valid_under(self, public: Ed25519PublicKey) -> bool:
        try:
            public.verify(self.sig, self.payload())
        except InvalidSignature:
            return False
        return True

    def line(self) -> bytes:
        body = {"v": 1, "n": self.n, "batch": self.batch, "last_seq": self.last_seq, "hash": self.hash.hex(),
                "at": self.at.isoformat(), "key": self.key, "sig": base64.b64encode(self.sig).decode()}
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def parse(line: bytes) -> Checkpoint:
    """A checkpoint from one log line (its signature is not checked here)."""
    if len(line) > LINE_BYTES_MAX:
        raise ValueError(f"longer than {LINE_BYTES_MAX} bytes")
    try:
        d = json.loads(line)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(d, dict) or d.get("v") != 1:
        raise ValueError("not a version 1 checkpoint")
    if set(d) != {"v", "n", "batch", "last_seq", "hash", "at", "key", "sig"}:
        raise ValueError("unexpected or missing fields")
    for name in ("n", "batch", "last_seq"):
        if type(d[name]) is not int or not 0 <= d[name] <= _INT_MAX:
            raise ValueError(f"{name} is not a non-negative 64-bit integer")
    if d["n"] < 1:
        raise ValueError("n starts at 1")
    try:
        hash_ = bytes.fromhex(d["hash"]) if isinstance(d["hash"], str) else b""
        sig = base64.b64decode(d["sig"], validate=True) if isinstance(d["sig"], str) else b""
        at = datetime.fromisoformat(d["at"]) if isinstance(d["at"], str) else None
    except (ValueError, binascii.Error):
        raise ValueError("hash, sig or at is malformed") from None
    if len(hash_) != 32 or len(sig) != 64 or at is None or at.tzinfo is None:
        raise ValueError("hash, sig or at is malformed")
    if not isinstance(d["key"], str) or len(d["key"]) != 16:
        raise ValueError("key is not a key id")
    cp = Checkpoint(d["n"], d["batch"], d["last_seq"], hash_, at, d["key"], sig)
    if cp.at.isoformat() != d["at"]:
        raise ValueError("at is not in canonical form")
    return cp


class CheckpointLog:
    """The log file. Blocking file IO: the service calls it in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def open_for_append(self) -> Checkpoint | None:
        """Creates the log (and its folder) if needed, cuts off a torn last
        line, and returns the last checkpoint (None when the log is empty).
        Raises ValueError when the last complete line is not a checkpoint."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            start = max(0, size - _TAIL_BYTES)
            tail = os.pread(fd, size - start, start)
            if tail and not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                keep = start + cut + 1 if cut >= 0 else (0 if start == 0 else None)
                if keep is None:
                    raise ValueError(f"{self.path}: its last line is longer than {LINE_BYTES_MAX} bytes")
                os.ftruncate(fd, keep)
                os.fsync(fd)
                tail = tail[:keep - start]
            lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
            last = lines[-1] if tail else b""
            if start > 0 and len(lines) < 2:
                raise ValueError(f"{self.path}: its last line is longer than {LINE_BYTES_MAX} bytes")
        finally:
            os.close(fd)
        _fsync_dir(self.path.parent)
        if not last:
            return None
        try:
            return parse(last)
        except ValueError as e:
            raise ValueError(f"{self.path}: its last line is not a checkpoint ({e})") from None

    def append(self, cp: Checkpoint) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = cp.line()
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {self.path}")
            os.fsync(fd)
        finally:
            os.close(fd)

    def lines(self):
        """(line number, bytes) of every line, streamed; FileNotFoundError if absent."""
        with self.path.open("rb") as f:
            i = 0
            while raw := f.readline(LINE_BYTES_MAX + 1):
                i += 1
                if len(raw) > LINE_BYTES_MAX and not raw.endswith(b"\n"):  # too long: skip the rest of it
                    while (more := f.readline(LINE_BYTES_MAX + 1)) and not more.endswith(b"\n"):
                        pass
                    yield i, raw  # parse() refuses it as too long
                else:
                    yield i, raw.rstrip(b"\n")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
