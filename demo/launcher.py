"""Starts the demo Triton in a child process and hands back a handle to it.

The child (``python -m idlegrid.demo``) leads its own process group, so
``kill()`` takes ``tritonserver`` and its Python-backend stubs down with it,
as a crashed node would go. The child stops by itself if this process dies
without stopping it. Startup blocks until the server and every model
report ready; from async code call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from idlegrid.demo.leftovers import Leftovers, group_pids
from idlegrid.demo.names import CHEAT_MODES, MODEL_NAMES
from idlegrid.demo.ports import resolve_port

STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
HOST = "127.0.0.1"
_POLL_S = 0.25
_PROBE_TIMEOUT_S = 2.0
_LOG_TAIL_CHARS = 4000

log = structlog.get_logger(__name__)


class DemoTritonError(RuntimeError):
    """The demo Triton exited or did not become ready; the message holds the
    tail of its log."""


@dataclasses.dataclass(slots=True)
class DemoTriton:
    """A running demo Triton in a child process."""

    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    metrics_port: int
    models: tuple[str, ...]
    workdir: Path
    host: str = HOST
    # Exit status once stopped or killed; the group is never signalled again
    # after that (its id could belong to another process by then).
    _status: int | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def grpc_url(self) -> str:
        """``host:port``, as ``tritonclient.grpc`` takes it."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """``host:port``, as ``tritonclient.http`` takes it."""
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self.workdir / "triton.log"

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_bytes()[-chars:].decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def is_running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then wait for a clean shutdown; SIGKILL after ``timeout_s``.
        Returns the child's exit status. Idempotent, like ``kill``."""
        if self._status is not None:
            return self._status
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("demo_triton_stop_timeout", pid=self.process.pid, timeout_s=timeout_s)
        return self._kill_group_and_clean()

    def kill(self) -> int:
        """SIGKILL the whole process group at once, as a crash would."""
        return self._kill_group_and_clean()

    def live_pids(self) -> list[int]:
        """Processes of the child's group that are still running (not zombies)."""
        return group_pids(self.process.pid)

    def _kill_group_and_clean(self) -> int:
        if self._status is not None:
            return self._status
        leftovers = Leftovers.of_group(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        status = self.process.wait()
        leftovers.remove()
        # The pytriton workspace (a copy of the tritonserver binaries) and the log.
        shutil.rmtree(self.workdir, ignore_errors=True)
        self._status = status
        return status

    def __enter__(self) -> DemoTriton:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _ready(url: str, models: tuple[str, ...]) -> bool:
    try:
        with grpcclient.InferenceServerClient(url) as client:
            return client.is_server_ready(client_timeout=_PROBE_TIMEOUT_S) and all(
                client.is_model_ready(m, client_timeout=_PROBE_TIMEOUT_S) for m in models
            )
    except InferenceServerException:
        return False


def start_demo_triton(
    *,
    grpc_port: int = 0,
    http_port: int = 0,
    metrics_port: int = 0,
    models: tuple[str, ...] = MODEL_NAMES,
    llm_delay_ms: int = 0,
    fail: bool = False,
    fail_after: int = -1,
    llm_extra_tokens: int = 0,
    n_threads: int | None = None,
    cheat: str | None = None,
    cheat_rate: float = 1.0,
    cheat_seed: int = 0,
    cheat_after: int = 0,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> DemoTriton:
    """Launches the demo Triton and returns once the server and ``models``
    are ready. Ports of 0 are replaced by free ones first.

    ``llm_delay_ms`` adds a delay per generated token (a slow node);
    ``fail`` makes every inference return an error (a failing node);
    ``fail_after`` >= 0 lets each model serve that many requests first (a node
    that passes the registry's canary, then fails);
    ``llm_extra_tokens`` makes the language model generate that many tokens
    past each request's max_tokens (a node that floods its output);
    ``cheat`` (a mode of cheats.py) makes the node cheat on a share
    ``cheat_rate`` of its language-model jobs, chosen by ``cheat_seed``,
    after serving ``cheat_after`` of them honestly.
    Raises DemoTritonError if the child exits or is not ready in time.
    """
    unknown = set(models) - set(MODEL_NAMES)
    if unknown or not models:
        raise ValueError(f"models must be a non-empty subset of {MODEL_NAMES}, got {models}")
    if cheat is not None and cheat not in CHEAT_MODES or not 0.0 <= cheat_rate <= 1.0:
        raise ValueError(f"cheat must be one of {CHEAT_MODES} and cheat_rate in [0, 1], got {cheat}, {cheat_rate}")
    ports = [resolve_port(p, HOST) for p in (grpc_port, http_port, metrics_port)]
    if len(set(ports)) != 3:
        raise ValueError(f"grpc, http and metrics ports must differ, got {ports}")
    workdir = Path(tempfile.mkdtemp(prefix="idlegrid-demo-triton-"))
    cmd = [
        sys.executable, "-m", "idlegrid.demo",
        "--host", HOST,
        "--grpc-port", str(ports[0]),
        "--http-port", str(ports[1]),
        "--metrics-port", str(ports[2]),
        "--models", ",".join(models),
        "--llm-delay-ms", str(llm_delay_ms),
        "--workspace", str(workdir / "workspace"),
        "--log-format", "json",
        "--parent-pid", str(os.getpid()),
    ]  # fmt: skip
    if fail:
        cmd.append("--fail")
    if fail_after >= 0:
        cmd += ["--fail-after", str(fail_after)]
    if llm_extra_tokens:
        cmd += ["--llm-extra-tokens", str(llm_extra_tokens)]
    if n_threads is not None:
        cmd += ["--n-threads", str(n_threads)]
    if cheat is not None:
        cmd += ["--cheat", cheat, "--cheat-rate", repr(cheat_rate), "--cheat-seed", str(cheat_seed),
                "--cheat-after", str(cheat_after)]
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    started = time.monotonic()
    with (workdir / "triton.log").open("wb") as log_file:
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    triton = DemoTriton(process, ports[0], ports[1], ports[2], tuple(models), workdir)
    deadline = started + startup_timeout_s
    while not _ready(triton.grpc_url, triton.models):
        if process.poll() is not None:
            tail = triton.log_tail()
            triton.kill()
            raise DemoTritonError(f"demo Triton exited with status {process.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            tail = triton.log_tail()
            triton.kill()
            raise DemoTritonError(f"demo Triton not ready after {startup_timeout_s} s:\n{tail}")
        time.sleep(_POLL_S)
    log.info(
        "demo_triton_started",
        pid=process.pid,
        grpc_url=triton.grpc_url,
        http_url=triton.http_url,
        models=list(models),
        startup_ms=round((time.monotonic() - started) * 1000),
    )
    return triton
