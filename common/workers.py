"""A background worker made of passes, the shape of every outbox-like loop
(metering's settlement, earnings and clearing workers): a pass
(``run_once``) does what it can and says whether more may be waiting; between
passes the worker sleeps until ``wake()`` or its poll interval. A pass that
fails is logged and tried again at the next interval: the rows keep the
work, so nothing is lost with the exception."""

from __future__ import annotations

import asyncio

import structlog

log = structlog.get_logger("worker")


class PassWorker:
    """Subclasses set ``name`` and implement ``run_once``; ``poll_s`` is the
    longest sleep between passes."""

    name = "worker"

    def __init__(self, poll_s: float) -> None:
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def run_once(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wake(self) -> None:
        """Run a pass now rather than at the next interval."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                busy = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - keep going; the rows keep the work
                log.warning("worker.pass_failed", worker=self.name, error=str(e))
                busy = False
            if not busy:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                except TimeoutError:
                    pass
                self._wake.clear()


__all__ = ["PassWorker"]
