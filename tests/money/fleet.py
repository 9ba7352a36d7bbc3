"""The money path as real processes for SIGKILL tests: the ledger, metering
and the scheduler each run as ``idlegrid <svc> serve`` (a child process on a
fixed port, so a restart is found where the killed one was); the registry
and the relay run in-process (tests/harness), and one node agent joins
through the relay in front of the session's demo Triton.

:class:`Load` is the partners' traffic straight to the scheduler: unary echo
jobs and streamed chat, each with a job id chosen here, so every job sent
and every job answered (the client got the whole answer) is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from idlegrid.bench.kit import free_port, spawn, wait_healthy
from idlegrid.common.channel import open_channel
from idlegrid.scheduler.v1 import scheduler_pb2_grpc
from tests.harness import TOKEN, eventually, servers
from tests.harness.stack import Stack, _create_provider, seed_catalog
from tests.scheduler.support import chat, echo

CHILDREN = ("ledger", "metering", "scheduler")
MAX_JOB_S = 5  # the scheduler's longest job: a killed scheduler's leases clear after use_until + this + slack
RPC_TIMEOUT_S = 30.0
ERROR_PAUSE_S = 0.05  # after a failed request, so a dead service is not spun on


@dataclass
class Child:
    """One service as a child process on a fixed port."""

    kind: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    kills: int = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.kind} is running"
        self.proc = spawn([self.kind, "serve"], env=self.env, log_path=self.log_path)
        await wait_healthy(self.addr, proc=self.proc, timeout_s=120)

    def kill(self) -> None:
        """SIGKILL, now (a crash: no drain, no hook runs)."""
        assert self.proc is not None and self.proc.poll() is None, f"{self.kind} died on its own; see {self.log_path}"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Fleet:
    stack: Stack
    children: dict[str, Child]
    home: Path

    @property
    def db_url(self) -> str:
        return self.stack.db_url

    def env(self) -> dict[str, str]:
        return next(iter(self.children.values())).env

    async def verify_cli(self) -> tuple[int, str]:
        """``idlegrid ledger verify`` as an operator runs it: (exit code, output)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "idlegrid.cli.main", "ledger", "verify", env={**os.environ, **self.env()},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode, out.decode(errors="replace")

    async def stop(self) -> None:
        try:
            await self.stack.stop()
        finally:
            for c in reversed(list(self.children.values())):
                c.stop()


async def start_fleet(config, db_url: str, home: Path) -> Fleet:
    """Ledger (child), registry and relay (in-process), metering and the
    scheduler (children), the demo catalog, a provider, one node READY."""
    stack = Stack(config, db_url)
    ports = {k: free_port() for k in CHILDREN}
    env = {"IDLEGRID_HOME": str(home), "IDLEGRID_DATABASE_URL": db_url, "IDLEGRID_SERVICE_TOKEN": TOKEN,
           "IDLEGRID_LOG_FORMAT": "json", "IDLEGRID_LOG_LEVEL": "info", "IDLEGRID_SHUTDOWN_GRACE_S": "2",
           "IDLEGRID_EARNINGS_HOLD_S": "0", "IDLEGRID_EARNINGS_POLL_MS": "100",
           "IDLEGRID_CLEARING_WINDOW_MS": "200", "IDLEGRID_SCHEDULER_MAX_JOB_S": str(MAX_JOB_S),
           "IDLEGRID_CLEARING_LEASE_SLACK_S": "3", "IDLEGRID_CLEARING_OPENING_S": "15",
           **{f"IDLEGRID_{k.upper()}_PORT": str(p) for k, p in ports.items()},
           **{f"IDLEGRID_{k.upper()}_ADDR": f"127.0.0.1:{p}" for k, p in ports.items()}}
    children = {k: Child(k, ports[k], env, home / f"{k}.log") for k in CHILDREN}
    fleet = Fleet(stack, children, home)
    try:
        await children["ledger"].start()
        stack.addrs["ledger"] = children["ledger"].addr
        await servers.start(stack, ("registry", "relay"), ports={})
        env.update(IDLEGRID_REGISTRY_ADDR=stack.addrs["registry"], IDLEGRID_RELAY_ADDR=stack.addrs["relay"])
        for k in ("metering", "scheduler"):
            await children[k].start()
            stack.addrs[k] = children[k].addr
        from tests.harness.stack import _STUBS

        for part, stub in _STUBS.items():
            ch = open_channel(stack.addrs[part], token=TOKEN)
            stack.channels.append(ch)
            stack.stubs[part] = stub(ch)
        await seed_catalog(stack)
        await _create_provider(stack)
        await stack.add_node("a")
    except BaseException:
        with contextlib.suppress(Exception):
            await fleet.stop()
        raise
    return fleet


@dataclass
class Load:
    """Partners' jobs until ``stop``: ``unary`` echo loops and ``streams``
    chat loops per consumer. ``on_answer(job)`` runs the moment a unary
    answer arrives, ``on_text(job)`` at a stream's first text chunk (a test
    kills there)."""

    scheduler_addr: str
    consumers: list[bytes]
    sent: dict[bytes, bytes] = field(default_factory=dict)  # job id -> consumer
    answered: set[bytes] = field(default_factory=set)
    outcomes: Counter = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    on_answer: object = None
    on_text: object = None
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _channel: object = None

    def start(self, *, unary: int = 2, streams: int = 1) -> None:
        self._channel = open_channel(self.scheduler_addr, token=TOKEN)
        stub = scheduler_pb2_grpc.SchedulerServiceStub(self._channel)
        for c in self.consumers:
            self._tasks += [asyncio.create_task(self._unary(stub, c)) for _ in range(unary)]
            self._tasks += [asyncio.create_task(self._stream(stub, c)) for _ in range(streams)]

    async def finish(self) -> None:
        self.stop.set()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self._channel.close()

    async def answers(self, n: int, *, what: str) -> None:
        """Waits until ``n`` more jobs were answered from now."""
        target = len(self.answered) + n
        await eventually(lambda: len(self.answered) >= target, what=what, timeout_s=180)

    def _failed(self, kind: str, e: grpc.aio.AioRpcError) -> None:
        self.outcomes[f"{kind}:{e.code().name}"] += 1

    async def _unary(self, stub, consumer: bytes) -> None:
        while not self.stop.is_set():
            job = os.urandom(16)
            self.sent[job] = consumer
            try:
                await stub.Infer(echo(consumer, job=job), timeout=RPC_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                self._failed("unary", e)
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            self.answered.add(job)
            self.outcomes["unary:OK"] += 1
            if self.on_answer is not None:
                self.on_answer(job)

    async def _stream(self, stub, consumer: bytes) -> None:
        while not self.stop.is_set():
            job = os.urandom(16)
            self.sent[job] = consumer
            final = False
            try:
                async for chunk in stub.InferStream(chat(consumer, "Count to five.", max_tokens=6, job=job),
                                                    timeout=RPC_TIMEOUT_S):
                    which = chunk.WhichOneof("chunk")
                    if which == "text" and self.on_text is not None:
                        self.on_text(job)
                    final = final or which == "final"
            except grpc.aio.AioRpcError as e:
                self._failed("stream", e)
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            if final:
                self.answered.add(job)
                self.outcomes["stream:OK"] += 1
            else:
                self.outcomes["stream:no_final"] += 1
