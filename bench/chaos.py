"""The soak's fleet: the marketplace as separate processes that can be
SIGKILLed and restarted on the same ports, and the seeded chaos loop that
does it (bench/soak.py drives both).

A kill is a crash: SIGKILL, no drain. The demo node's kill takes its agent
and its demo Triton's whole process group down at once (the Triton leads
its own session), then removes what a killed Triton leaves in /dev/shm and
/tmp, as ``DemoTriton.kill`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from idlegrid.bench.kit import spawn, wait_healthy

SERVICES = ("ledger", "metering", "registry", "relay", "scheduler", "gateway")
NODE = "node"
KINDS = (*SERVICES, NODE)
START_TIMEOUT_S = 120.0
HTTP_PROBE_TIMEOUT_S = 2.0
POLL_S = 0.1


def _demo_triton_groups(parent_pid: int) -> list[int]:
    """Process groups of the demo Tritons a node process started (each the
    child's pid: it leads its own session)."""
    groups = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent_pid and int(fields[2]) == int(stat.parent.name):
                groups.append(int(stat.parent.name))
    return groups


@dataclasses.dataclass
class Fleet:
    """The processes of one soak: ``start(kind)``, ``kill(kind)``, ``stop()``."""

    home: Path
    env: dict[str, str]
    addrs: dict[str, str]
    node_args: list[str] = dataclasses.field(default_factory=list)
    procs: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict)
    kills: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    @property
    def gateway_url(self) -> str:
        return f"http://{self.addrs['gateway']}"

    def _args(self, kind: str) -> list[str]:
        return list(self.node_args) if kind == NODE else [kind, "serve"]

    async def start(self, kind: str, *, wait: bool = True) -> None:
        """Starts ``kind`` (a service or the node); with ``wait``, returns once
        a service answers its health check (the node: once it was spawned)."""
        if kind not in KINDS:
            raise ValueError(f"unknown process kind {kind!r}; expected one of {KINDS}")
        if kind in self.procs and self.procs[kind].poll() is None:
            raise RuntimeError(f"{kind} is already running")
        proc = spawn(self._args(kind), env=self.env, log_path=self.home / f"{kind}.log")
        self.procs[kind] = proc
        if wait and kind == "gateway":
            await wait_http(self.gateway_url, proc)
        elif wait and kind != NODE:
            await wait_healthy(self.addrs[kind], proc=proc, timeout_s=START_TIMEOUT_S)

    def kill(self, kind: str) -> None:
        """SIGKILL ``kind`` (for the node: its agent and its Triton's group)."""
        proc = self.procs.get(kind)
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"{kind} is not running")
        if kind == NODE:
            _kill_node(proc)
        else:
            proc.kill()
            proc.wait()
        self.kills[kind] += 1

    def alive(self, kind: str) -> bool:
        proc = self.procs.get(kind)
        return proc is not None and proc.poll() is None

    def stop(self) -> None:
        """Ends every process (SIGTERM, then SIGKILL after a bound); idempotent."""
        if NODE in self.procs and self.procs[NODE].poll() is None:
            _kill_node(self.procs[NODE])
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _kill_node(proc: subprocess.Popen) -> None:
    from idlegrid.demo.leftovers import Leftovers

    groups = _demo_triton_groups(proc.pid)
    leftovers = [Leftovers.of_group(g) for g in groups]
    for g in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(g, signal.SIGKILL)
    proc.kill()
    proc.wait()
    for g in groups:  # reap nothing (not our children) but wait until they are gone
        deadline = time.monotonic() + 10
        while Path(f"/proc/{g}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    for left in leftovers:
        left.remove()


async def wait_http(url: str, proc: subprocess.Popen, *, timeout_s: float = START_TIMEOUT_S) -> None:
    """Waits until the gateway at ``url`` answers GET /healthz with 200."""
    deadline = time.monotonic() + timeout_s
    timeout = aiohttp.ClientTimeout(total=HTTP_PROBE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {proc.returncode} before it answered")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with s.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway at {url} did not answer in {timeout_s:g} s")
            await asyncio.sleep(POLL_S)


@dataclasses.dataclass(frozen=True)
class ChaosPlan:
    """When and what to kill. Gaps and downtimes are drawn from ``seed``;
    kinds come in shuffled rounds, so every kind is hit once per round."""

    seed: int
    kinds: tuple[str, ...] = KINDS
    gap_s: tuple[float, float] = (2.0, 6.0)  # between one restart being ready and the next kill
    down_s: tuple[float, float] = (0.0, 1.0)  # how long a killed process stays dead
    kills_max: int = 100

    def __post_init__(self) -> None:
        if not self.kinds or set(self.kinds) - set(KINDS):
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        for lo, hi in (self.gap_s, self.down_s):
            if not 0 <= lo <= hi <= 600:
                raise ValueError(f"a range must be 0 <= lo <= hi <= 600 s, got {(lo, hi)}")
        if not 0 <= self.kills_max <= 10_000:
            raise ValueError(f"kills_max must be in [0, 10000], got {self.kills_max}")


@dataclasses.dataclass
class KillEvent:
    kind: str
    at_s: float  # since the soak's traffic started (time.monotonic() base in ChaosLoop.t0)
    back_s: float = -1.0  # when it was ready again


@dataclasses.dataclass
class ChaosLoop:
    """Kills and restarts until ``deadline`` (monotonic) or ``plan.kills_max``.

    ``before_kill(kind)`` runs before each kill and ``after_restart(kind)``
    once the process is back (the soak waits there for the node to serve
    again, and quiesces traffic around scheduler kills in the suite's run)."""

    fleet: Fleet
    plan: ChaosPlan
    t0: float
    before_kill: Callable[[str], Awaitable[None]] | None = None
    after_restart: Callable[[str], Awaitable[None]] | None = None
    events: list[KillEvent] = dataclasses.field(default_factory=list)

    async def run(self, deadline: float) -> None:
        rng = random.Random(self.plan.seed)
        order: list[str] = []
        while len(self.events) < self.plan.kills_max:
            await asyncio.sleep(rng.uniform(*self.plan.gap_s))
            if time.monotonic() >= deadline:
                return
            if not order:
                order = list(self.plan.kinds)
                rng.shuffle(order)
            kind = order.pop()
            if self.before_kill is not None:
                await self.before_kill(kind)
            ev = KillEvent(kind, time.monotonic() - self.t0)
            self.events.append(ev)
            try:
                self.fleet.kill(kind)
                await asyncio.sleep(rng.uniform(*self.plan.down_s))
            finally:
                await self.fleet.start(kind)
            if self.after_restart is not None:
                await self.after_restart(kind)
            ev.back_s = time.monotonic() - self.t0
