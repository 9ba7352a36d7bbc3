"""Runs a real Triton Inference Server (via pytriton) with the demo models,
in this process, until asked to stop.

pytriton starts the ``tritonserver`` binary as a child process; the models'
inference functions run here, reached from Triton's Python-backend stubs.
Use ``start_demo_triton`` (launcher.py) to get all of this in a child
process that can be stopped or killed as a unit.
"""

from __future__ import annotations

import dataclasses
import os
import sysconfig
import threading
import time
from pathlib import Path

import structlog
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

from idlegrid.demo import echo_model, llm_model, scoring_model
from idlegrid.demo.cheats import CheatOptions
from idlegrid.demo.names import ECHO_MODEL_NAME, LLM_MODEL_NAME, MODEL_NAMES, SCORE_MODEL_NAME
from idlegrid.demo.ports import resolve_port
from idlegrid.demo.smollm2 import N_THREADS_DEFAULT, load_smollm2

DEFAULT_HOST = "127.0.0.1"
# Seconds Triton waits for in-flight requests when asked to stop.
EXIT_TIMEOUT_S = 5
_ALIVE_CHECK_S = 1.0
# Endpoints nobody on a demo node needs; pytriton guards them with a random
# token. Health, metadata, inference, model config, the model repository
# index and statistics stay open (the server binds to loopback by default).
_RESTRICTED_ENDPOINTS = ["shared-memory", "trace", "logging"]

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str = DEFAULT_HOST
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    models: tuple[str, ...] = MODEL_NAMES
    llm_delay_ms: int = 0
    fail: bool = False
    fail_after: int = -1  # >= 0: each model serves this many requests, then fails
    llm_extra_tokens: int = 0  # a flooding node: generates this many tokens past max_tokens
    n_threads: int = N_THREADS_DEFAULT
    workspace: Path | None = None
    cheat: CheatOptions = CheatOptions()  # a cheating node (cheats.py); honest by default

    def __post_init__(self) -> None:
        unknown = set(self.models) - set(MODEL_NAMES)
        if unknown or not self.models:
            raise ValueError(
                f"models must be a non-empty subset of {MODEL_NAMES}, got {self.models}"
            )
        if self.llm_delay_ms < 0:
            raise ValueError(f"llm_delay_ms must be >= 0, got {self.llm_delay_ms}")
        if not 0 <= self.llm_extra_tokens <= 4096:
            raise ValueError(f"llm_extra_tokens must be in [0, 4096], got {self.llm_extra_tokens}")


def python_libdir_first(ld_library_path: str | None) -> str:
    """``LD_LIBRARY_PATH`` with this interpreter's LIBDIR in front.

    Triton's Python-backend stub links ``libpython3.x.so``; with a pyenv
    Python it would otherwise find the system's copy, and models then fail to
    load with ``'_thread.RLock' object has no attribute '_recursion_count'``.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    rest = [p for p in (ld_library_path or "").split(os.pathsep) if p and p != libdir]
    return os.pathsep.join([libdir, *rest])


def serve(options: ServeOptions, stop: threading.Event) -> None:
    """Starts Triton with the chosen models, serves until ``stop`` is set or
    Triton dies (then raises), and stops it. Blocking."""
    started = time.monotonic()
    grpc_port = resolve_port(options.grpc_port, options.host)
    http_port = resolve_port(options.http_port, options.host)
    metrics_port = resolve_port(options.metrics_port, options.host)
    # Read by pytriton when it spawns tritonserver, which passes it on to the stubs.
    os.environ["LD_LIBRARY_PATH"] = python_libdir_first(os.environ.get("LD_LIBRARY_PATH"))

    llm = None
    if LLM_MODEL_NAME in options.models:
        llm = llm_model.LlmModel(
            load_smollm2(n_threads=options.n_threads),
            token_delay_ms=options.llm_delay_ms,
            fail=options.fail,
            fail_after=options.fail_after,
            extra_tokens=options.llm_extra_tokens,
            cheat=options.cheat,
        )
    scorer = None
    if SCORE_MODEL_NAME in options.models:
        scorer = scoring_model.ScoringModel(load_smollm2(n_threads=options.n_threads), fail=options.fail)
    config = TritonConfig(
        http_address=options.host,
        http_port=http_port,
        grpc_address=options.host,
        grpc_port=grpc_port,
        metrics_address=options.host,
        metrics_port=metrics_port,
        allow_gpu_metrics=False,
        exit_timeout_secs=EXIT_TIMEOUT_S,
        strict_readiness=True,
    )
    triton = Triton(
        config=config,
        workspace=options.workspace,
        security_config=TritonSecurityConfig(restricted_endpoints=_RESTRICTED_ENDPOINTS),
    )
    try:
        if llm is not None:
            triton.bind(
                model_name=LLM_MODEL_NAME,
                infer_func=llm.infer,
                inputs=llm_model.INPUTS,
                outputs=llm_model.OUTPUTS,
                config=llm_model.CONFIG,
                strict=True,
            )
        if scorer is not None:
            triton.bind(
                model_name=SCORE_MODEL_NAME,
                infer_func=scorer.infer,
                inputs=scoring_model.INPUTS,
                outputs=scoring_model.OUTPUTS,
                config=scoring_model.CONFIG,
                strict=True,
            )
        if ECHO_MODEL_NAME in options.models:
            triton.bind(
                model_name=ECHO_MODEL_NAME,
                infer_func=echo_model.EchoModel(fail=options.fail, fail_after=options.fail_after).infer,
                inputs=echo_model.INPUTS,
                outputs=echo_model.OUTPUTS,
                config=echo_model.CONFIG,
                strict=True,
            )
        triton.run()
        log.info(
            "demo_triton_ready",
            host=options.host,
            grpc_port=grpc_port,
            http_port=http_port,
            metrics_port=metrics_port,
            models=list(options.models),
            fail=options.fail,
            llm_delay_ms=options.llm_delay_ms,
            cheat=options.cheat.mode,
            cheat_rate=options.cheat.rate,
            startup_ms=round((time.monotonic() - started) * 1000),
        )
        while not stop.wait(_ALIVE_CHECK_S):
            if not triton.is_alive():
                raise RuntimeError("Triton Inference Server or a model proxy exited")
    finally:
        triton.stop()
        if llm is not None:
            llm.close()
        if scorer is not None:
            scorer.close()
        log.info("demo_triton_stopped")
