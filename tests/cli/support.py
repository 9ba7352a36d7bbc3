"""``idlegrid up`` as a real child process, with its own IDLEGRID_HOME and
free ports, and a /proc scan for every process it left behind.

Every process that ``up`` starts inherits its environment (services, the
demo Triton and its tritonserver, pg_ctl and PostgreSQL), so a process whose
environment holds this run's IDLEGRID_HOME belongs to it, whatever its
process group or parent."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

_PROC = Path("/proc")
_PORTS = ("LEDGER", "REGISTRY", "SCHEDULER", "METERING", "GATEWAY")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def up_env(home: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDLEGRID_")}
    env.update({f"IDLEGRID_{name}_PORT": str(port) for name, port in ports.items()})
    env.update(IDLEGRID_HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def processes_of(home: Path) -> list[int]:
    """Live (not zombie) processes whose environment names ``home``."""
    mark = f"IDLEGRID_HOME={home}".encode()
    found = []
    for entry in _PROC.glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError):
            if entry.name == str(os.getpid()):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z" and mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            argv = (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out.append(f"{pid}: {argv[:160]}")
    return out


def is_demo_child(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return b"idlegrid.demo" in (_PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    return False


class Up:
    """One ``idlegrid up`` run: its process and everything it printed."""

    def __init__(self, home: Path, *, demo_node: bool, ports: dict[str, int] | None = None,
                 relay_port: int | None = None) -> None:
        self.home = home
        self.ports = ports or {name: free_port() for name in _PORTS}
        self.relay_port = relay_port or free_port()
        cmd = [sys.executable, "-m", "idlegrid.cli", "up", "--log-level", "error",
               "--relay-listen", f"127.0.0.1:{self.relay_port}"]
        if not demo_node:
            cmd.append("--no-demo-node")
        self._chunks: list[str] = []  # as printed, unfinished lines too ("[9/9] ... ")
        self.proc = subprocess.Popen(cmd, env=up_env(home, self.ports), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            self._chunks.append(chunk.decode(errors="replace"))

    @property
    def output(self) -> str:
        return "".join(self._chunks)

    def printed(self, text: str) -> bool:
        return text in self.output

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['GATEWAY']}"

    def signal(self, sig: int = signal.SIGINT) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 120.0) -> int:
        """The exit status; the bound only keeps a broken test from hanging."""
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=timeout_s)
        return code

    def kill_everything(self) -> None:
        """SIGKILL every process of this run at once, PostgreSQL included, as
        a power cut or the OOM killer would."""
        for pid in [self.proc.pid, *processes_of(self.home)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()

    def cleanup(self) -> None:
        """Whatever a failed test left running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in processes_of(self.home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
