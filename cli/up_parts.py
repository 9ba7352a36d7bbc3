"""How ``idlegrid up`` stops at any moment: the signals it listens to, the
parts it started (stopped in reverse order), and a demo Triton start that a
signal can cut short.

    first SIGINT/SIGTERM   cancels whatever runs (a start-up step, or the
                           wait after it); every part started so far stops
                           cleanly, in reverse order, the database last
    second one             the stop in progress is cut short and every part
                           left is killed (services with no grace, the demo
                           Triton's process group SIGKILLed, PostgreSQL
                           stopped in immediate mode: it still stops)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

Stop = Callable[[], Awaitable[object]]

DEMO_TERM_GRACE_S = 15.0  # a demo Triton cut short in start-up: SIGTERM, then SIGKILL
_POLL_S = 0.2
_PROC = Path("/proc")


def say(msg: str) -> None:
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


class Signals:
    """SIGINT and SIGTERM while installed: the first cancels ``target`` (and
    sets ``requested``), any later one sets ``forced``."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self.target: asyncio.Task | None = None

    def _on_signal(self) -> None:
        if self.requested.is_set():
            if not self.forced.is_set():
                say("\nstopping now (killing what is left; the database still stops) ...")
            self.forced.set()
            return
        self.requested.set()
        if self.target is not None:
            self.target.cancel()

    @contextlib.contextmanager
    def installed(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        try:
            yield self
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    stop: Stop  # a clean stop
    kill: Stop  # a forced one, after a second signal


class Parts:
    """What ``up`` started, in order."""

    def __init__(self) -> None:
        self._parts: list[Part] = []

    def add(self, name: str, stop: Stop, kill: Stop | None = None) -> None:
        self._parts.append(Part(name, stop, kill or stop))

    async def stop_all(self, signals: Signals) -> None:
        """Stops every part in reverse order; a forced stop (``signals.forced``,
        now or while a clean stop runs) kills the rest instead."""
        while self._parts:
            part = self._parts.pop()
            try:
                if signals.forced.is_set():
                    await part.kill()
                    continue
                stopping = asyncio.create_task(part.stop())
                forced = asyncio.create_task(signals.forced.wait())
                await asyncio.wait({stopping, forced}, return_when=asyncio.FIRST_COMPLETED)
                forced.cancel()
                if stopping.done():
                    stopping.result()
                else:
                    stopping.cancel()
                    await asyncio.gather(stopping, return_exceptions=True)
                    await part.kill()
            except Exception as e:  # noqa: BLE001 - stop everything else regardless
                say(f"  (while stopping the {part.name}: {e!r})")


# ------------------------------------------------------- the demo Triton

def _demo_children() -> list[int]:
    """This process's demo Triton children (``python -m idlegrid.demo``)."""
    me, found = os.getpid(), []
    for stat in _PROC.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != me or fields[0] == "Z":
                continue
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
            if b"idlegrid.demo" in argv:
                found.append(int(stat.parent.name))
    return found


def _signal(pids: list[int], sig: int) -> None:
    """SIGTERM to the child (it stops its tritonserver cleanly); SIGKILL to
    its whole process group (it leads one: tritonserver and its stubs)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sig == signal.SIGKILL:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)


async def start_demo_triton(start: Callable[[], object], signals: Signals):
    """``start()`` (the blocking demo Triton launcher) in a thread, cut short
    when this task is cancelled: the child is sent SIGTERM (SIGKILL to its
    group after DEMO_TERM_GRACE_S, or at once when the stop is forced), the
    launcher sees it exit and cleans up, and only then does the cancellation
    go on, so no thread or child outlives ``up``."""
    launch = asyncio.ensure_future(asyncio.to_thread(start))
    try:
        return await asyncio.shield(launch)
    except asyncio.CancelledError:
        loop = asyncio.get_running_loop()
        term_until = loop.time() + DEMO_TERM_GRACE_S
        while not launch.done():
            forced = signals.forced.is_set() or loop.time() > term_until
            _signal(_demo_children(), signal.SIGKILL if forced else signal.SIGTERM)
            await asyncio.wait({launch}, timeout=_POLL_S)
        if not launch.cancelled() and launch.exception() is None:
            await asyncio.to_thread(launch.result().kill)  # ready just as the signal came
        raise


async def finish(coro: Awaitable[object]):
    """Awaits ``coro`` to its end even when this task is cancelled meanwhile
    (a step that cannot be cut short, such as the database's start, which
    takes seconds), then lets the cancellation go on."""
    step = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(step)
    except asyncio.CancelledError:
        await asyncio.gather(step, return_exceptions=True)
        raise
