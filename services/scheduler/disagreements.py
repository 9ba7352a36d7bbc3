"""Token-count disagreements, reported to the registry off the response path.

When a node's own token counts disagree with the platform's
(counting.disagrees), the platform's count is billed and the registry hears
of it: ReportCheck(kind=CHECK_KIND_TOKEN_COUNT, passed=false), a mark on the
node's reputation. The report is fire and forget: the caller never waits for
it, at most ``in_flight_max`` are under way at once (more are dropped, and
logged), each try has a deadline, and a failure is logged, never raised. The
registry's ReportCheck is idempotent per (node, job, kind), so a retry is safe.
"""

from __future__ import annotations

import asyncio

import grpc
import structlog

from idlegrid.registry.v1 import registry_pb2 as rpb

log = structlog.get_logger("scheduler.disagreements")

IN_FLIGHT_MAX = 256
TRIES = 3
TIMEOUT_S = 5.0
RETRY_DELAY_S = 0.2  # doubled after each failed try
DETAIL_CHARS_MAX = 1024  # registry.proto's limit
DRAIN_TIMEOUT_S = 10.0


def detail(platform: tuple[int, int], node: tuple[int, int]) -> str:
    return (f"token counts disagree: the platform counted {platform[0]} prompt and {platform[1]} completion "
            f"tokens, the node reported {node[0]} and {node[1]}; the platform's count was billed")[:DETAIL_CHARS_MAX]


class DisagreementReporter:
    """Sends ReportCheck for token-count disagreements in the background."""

    def __init__(self, registry, *, in_flight_max: int = IN_FLIGHT_MAX, timeout_s: float = TIMEOUT_S) -> None:
        if in_flight_max < 1:
            raise ValueError("in_flight_max must be at least 1")
        self._registry = registry  # RegistryServiceStub carrying the scheduler's token
        self._in_flight_max = in_flight_max
        self._timeout_s = timeout_s
        self._tasks: set[asyncio.Task] = set()
        self.dropped = 0  # reports not sent because too many were under way

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def report(self, *, node_id: bytes, job_id: bytes, platform: tuple[int, int], node: tuple[int, int]) -> None:
        """Queues one report; returns at once."""
        if len(self._tasks) >= self._in_flight_max:
            self.dropped += 1
            log.warning("count_report.dropped", node_id=node_id.hex(), job_id=job_id.hex(), in_flight=len(self._tasks))
            return
        req = rpb.ReportCheckRequest(node_id=node_id, job_id=job_id, kind=rpb.CHECK_KIND_TOKEN_COUNT, passed=False,
                                     detail=detail(platform, node))
        task = asyncio.get_running_loop().create_task(self._send(req))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Waits for the reports under way (graceful stop, tests)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    async def _send(self, req: rpb.ReportCheckRequest) -> None:
        delay = RETRY_DELAY_S
        for attempt in range(TRIES):
            try:
                await self._registry.ReportCheck(req, timeout=self._timeout_s)
                return
            except grpc.aio.AioRpcError as e:
                retry = e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if not retry or attempt == TRIES - 1:
                    log.error("count_report.failed", node_id=req.node_id.hex(), job_id=req.job_id.hex(),
                              code=e.code().name, details=e.details())
                    return
            except Exception as e:  # noqa: BLE001 - a report must never break the scheduler
                log.error("count_report.failed", node_id=req.node_id.hex(), job_id=req.job_id.hex(), error=repr(e))
                return
            await asyncio.sleep(delay)
            delay *= 2
