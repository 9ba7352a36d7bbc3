"""The agent's pause loop: every ``poll_interval_s`` it reads the GPU (the
seam in gpu_activity.py), asks the idle policy (idle_policy.py) whether the
node may serve, and brings the registry in line with SetPaused:

    wants pause, node READY (or PAUSED for another reason) → SetPaused(true, reason)
    may serve,   node PAUSED                                → SetPaused(false)

It reconciles rather than remembers, so a node that came back READY after a
lost link or a new registration is paused again on the next poll. A call the
registry refuses (the node is still verifying, say) is tried again on the
next poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

from idlegrid.node.gpu_activity import GpuActivity
from idlegrid.node.idle_policy import IdlePolicy, pause_reason
from idlegrid.registry.v1 import registry_pb2 as pb

log = structlog.get_logger("node.pausing")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class PauseLoop:
    def __init__(self, *, activity: GpuActivity, policy: IdlePolicy, state: Callable[[], tuple[int, str]],
                 set_paused: Callable[[bool, str], Awaitable[None]], triton_busy: Callable[[], bool],
                 triton_pids: Callable[[], frozenset[int]], clock: Clock = utc_now) -> None:
        self._activity = activity
        self._policy = policy
        self._state = state
        self._set_paused = set_paused
        self._busy = triton_busy
        self._pids = triton_pids
        self._clock = clock
        self._task: asyncio.Task | None = None
        self.reason: str | None = None  # the last verdict
        self.polls = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="node-pausing")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._activity.close()

    async def poll(self) -> None:
        """One look and, if needed, one SetPaused."""
        state, detail = self._state()
        reading = await asyncio.to_thread(self._activity.read, self._pids() | self._policy.ignore_pids)
        reason = pause_reason(reading, triton_busy=self._busy(), policy=self._policy, now=self._clock(),
                              paused=state == pb.NODE_STATE_PAUSED)
        self.polls += 1
        if reason != self.reason:
            log.info("node.idle_verdict", pause=reason is not None, reason=reason)
            self.reason = reason
        if reason is not None and (state == pb.NODE_STATE_READY
                                   or (state == pb.NODE_STATE_PAUSED and detail != reason)):
            await self._set_paused(True, reason)
        elif reason is None and state == pb.NODE_STATE_PAUSED:
            await self._set_paused(False, "the GPU is idle again")

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the registry may refuse or be away: next poll
                log.warning("node.pause_poll_failed", error=str(e))
            await asyncio.sleep(self._policy.poll_interval_s)
