"""SmolLM2-135M-Instruct loaded once with llama-cpp-python, on the CPU.

Weight repacking into "extra" buffer types is turned off. On CPUs that
advertise AMX, a natively built llama.cpp otherwise routes matrix products
through AMX tiles, and on the project's VMs (which advertise AMX but fault on
``ldtilecfg``) that kills the process with SIGSEGV on the first token. The
plain AVX-512/AVX2 path is as fast for a model this small (Q4_1 is not
repacked on non-AMX CPUs anyway).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import llama_cpp
import llama_cpp.llama_cpp as llama_cpp_c
import structlog

from idlegrid.models.weights import gguf_path

# One thread, measured on the project's 2-core VMs: llama.cpp's OpenMP
# workers spin at every barrier, so with 2 threads any other busy process
# (Triton itself, a client, a test) stalls them. Inside Triton: 1 thread
# ~46 tokens/s, 2 threads ~30; with one core kept busy by another process,
# 47 against 4 tokens/s. Pass n_threads=2 on a machine with cores to spare.
N_THREADS_DEFAULT = 1
N_CTX_DEFAULT = 2048
_WARMUP_PROMPT = b"Hello"
_WARMUP_TOKENS = 2

log = structlog.get_logger(__name__)
_params_patch_lock = threading.Lock()


@contextlib.contextmanager
def _no_extra_buffer_types() -> Iterator[None]:
    # Llama.__init__ builds its model parameters from this function and offers
    # no argument for use_extra_bufts, so it is wrapped for the duration of
    # the constructor only.
    default_params = llama_cpp_c.llama_model_default_params

    def params():  # type: ignore[no-untyped-def]
        p = default_params()
        p.use_extra_bufts = False
        return p

    with _params_patch_lock:
        llama_cpp_c.llama_model_default_params = params
        try:
            yield
        finally:
            llama_cpp_c.llama_model_default_params = default_params


def load_smollm2(
    *, n_threads: int = N_THREADS_DEFAULT, n_ctx: int = N_CTX_DEFAULT
) -> llama_cpp.Llama:
    """Loads the model and runs one tiny generation, so that the first real
    request does not pay for the one-off graph and buffer set-up."""
    started = time.monotonic()
    with _no_extra_buffer_types():
        llm = llama_cpp.Llama(
            model_path=str(gguf_path()),
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_ctx=n_ctx,
            verbose=False,
        )
    loaded = time.monotonic()
    tokens = llm.tokenize(_WARMUP_PROMPT, add_bos=True, special=True)
    for i, _ in enumerate(llm.generate(tokens, temp=0.0)):
        if i + 1 >= _WARMUP_TOKENS:
            break
    log.info(
        "smollm2_loaded",
        n_threads=n_threads,
        n_ctx=n_ctx,
        load_ms=round((loaded - started) * 1000),
        warmup_ms=round((time.monotonic() - loaded) * 1000),
    )
    return llm
