"""Spot checks after READY: a sample of completed jobs is checked again on a
trusted node, off the response path.

    job completes ─▶ usage durable in metering (recording) ─▶ offer(): draw (checks_sampling)
      ─▶ bounded queue ─▶ worker: a READY trusted node serving the model (never the checked node)
      ─▶ the check, through the scheduler's own dispatch path (TritonPool: the relay or a direct endpoint)
           greedy LLM job   generate greedily again, compare exactly
           sampled LLM job  score the output, teacher-forced, with the model's scoring
                            companion ``<model>-score`` (checks_verdict.sampled)
           tensor job       re-run, compare within a tolerance
      ─▶ verdict (checks_verdict) ─▶ registry ReportCheck (a failure suspends the node)
                                  ─▶ metering RecordCheckResult (the job's check result)

``offer`` never waits and never raises: a partner's answer never waits for a
check. A sampled job that finds the queue full, or no trusted node, or a
checker that errs, is not checked (counted in ``counters``) and gives its
share of the budget back; only a verdict the trusted node produced is
reported, so a checker's trouble never counts against the checked node.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time

import grpc
import structlog

from idlegrid.common.node_view import NodeInfo, NodeTable
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler import checks_verdict as verdicts
from idlegrid.scheduler.checks_run import CheckRun, Sample
from idlegrid.scheduler.checks_sampling import Decision, Sampler, SpotCheckSettings, Unit, rate_for
from idlegrid.scheduler.triton import TritonPool

log = structlog.get_logger("scheduler.spot_checks")

REPORT_TRIES = 5
REPORT_TIMEOUT_S = 10.0
REPORT_RETRY_S = 0.2  # doubled after each failed try
DRAIN_TIMEOUT_S = 30.0


@dataclasses.dataclass(slots=True)
class CheckCounters:
    offered: int = 0  # completed jobs seen
    sampled: int = 0
    over_budget: int = 0  # drawn, but the budget had no room
    too_short: int = 0  # drawn sampled outputs too short to judge
    queue_drops: int = 0
    no_checker: int = 0  # no READY trusted node for the model but the checked one
    errors: int = 0  # the checker failed: no verdict
    run: int = 0
    passed: int = 0
    failed: int = 0
    reports_failed: int = 0  # a verdict the registry or metering did not take


def judgeable(sample: Sample) -> bool:
    """Whether a check of the job can reach a verdict: a sampled output of
    fewer than TOKENS_MIN tokens cannot (checks_verdict.sampled)."""
    return not sample.llm or verdicts.is_greedy(sample.params) or sample.completion_tokens >= verdicts.TOKENS_MIN


class SpotChecker:
    """``registry`` and ``metering``: stubs carrying the scheduler's token
    (metering None: check results are not recorded on jobs)."""

    def __init__(self, table: NodeTable, triton: TritonPool, registry, metering=None, *,
                 settings: SpotCheckSettings | None = None, sampler: Sampler | None = None) -> None:
        self.settings = settings or SpotCheckSettings()
        self.sampler = sampler or Sampler(self.settings.budget_share)
        self.counters = CheckCounters()
        self._table = table
        self._run = CheckRun(triton, timeout_s=self.settings.check_timeout_s)
        self._registry = registry
        self._metering = metering
        self._queue: asyncio.Queue[Sample] = asyncio.Queue(maxsize=self.settings.queue_max)
        self._workers: list[asyncio.Task] = []
        self._busy = 0

    # -- the response path's side: never waits ------------------------------

    def offer(self, sample: Sample, info: NodeInfo | None) -> None:
        """A completed job whose usage is durable; ``info``: its node."""
        try:
            self._offer(sample, info)
        except Exception as e:  # noqa: BLE001 - a check must never break a job
            log.error("spot_check.offer_failed", job_id=sample.job_id.hex(), error=repr(e))

    def _offer(self, sample: Sample, info: NodeInfo | None) -> None:
        c = self.counters
        c.offered += 1
        unit = Unit.TOKENS if sample.llm else Unit.REQUESTS
        self.sampler.served(unit, sample.cost)
        if info is None or self.settings.budget_share <= 0:
            return
        decision = self.sampler.decide(max(rate_for(info), self.settings.rate_min), unit, sample.cost)
        if decision is Decision.OVER_BUDGET:
            c.over_budget += 1
        if decision is not Decision.SAMPLED:
            return
        if not judgeable(sample):
            c.too_short += 1
            self.sampler.give_back(unit, sample.cost)
            return
        try:
            self._queue.put_nowait(sample)
        except asyncio.QueueFull:
            c.queue_drops += 1
            self.sampler.give_back(unit, sample.cost)
            log.warning("spot_check.queue_full", job_id=sample.job_id.hex(), queued=self._queue.qsize())
            return
        c.sampled += 1

    # -- the workers ---------------------------------------------------------

    def start(self) -> None:
        for i in range(self.settings.workers):
            self._workers.append(asyncio.create_task(self._work(), name=f"spot-check-{i}"))

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    @property
    def pending(self) -> int:
        """Sampled jobs queued or being checked."""
        return self._queue.qsize() + self._busy

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Waits until every sampled job was checked (tests, tools)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)

    async def _work(self) -> None:
        while True:
            sample = await self._queue.get()
            self._busy += 1
            try:
                await self.check(sample)
            except Exception as e:  # noqa: BLE001 - one bad check must not stop the worker
                log.error("spot_check.crashed", job_id=sample.job_id.hex(), error=repr(e))
            finally:
                self._busy -= 1
                self._queue.task_done()

    def checker_for(self, sample: Sample) -> NodeInfo | None:
        """The least loaded READY trusted node serving the model, other than
        the checked node; one of another provider when there is one."""
        now = time.monotonic()
        best, best_key = None, None
        for info in self._table.serving(sample.model):
            if info.node_id == sample.node_id or not info.node.trusted or not info.available(now):
                continue
            key = (info.node.provider_id == sample.provider_id, info.in_flight + info.queue_depth)
            if best_key is None or key < best_key:
                best, best_key = info, key
        return best

    async def check(self, sample: Sample) -> verdicts.Verdict | None:
        """Checks one sampled job and reports the verdict; None when no
        verdict could be reached (no checker, the checker failed)."""
        unit = Unit.TOKENS if sample.llm else Unit.REQUESTS
        checker = self.checker_for(sample)
        if checker is None:
            self.counters.no_checker += 1
            self.sampler.give_back(unit, sample.cost)
            log.info("spot_check.no_checker", job_id=sample.job_id.hex(), model=sample.model)
            return None
        checker.in_flight += 1
        try:
            verdict, cost = await self._run.run(sample, checker)
        except Exception as e:  # noqa: BLE001 - the checker's trouble (NodeError) or ours: no verdict
            self.counters.errors += 1
            self.sampler.give_back(unit, sample.cost)
            log.warning("spot_check.checker_failed", job_id=sample.job_id.hex(), checker=checker.node_id.hex(),
                        error=str(e))
            return None
        finally:
            checker.in_flight -= 1
        self.sampler.settle(unit, sample.cost, cost)
        c = self.counters
        c.run += 1
        if verdict.passed:
            c.passed += 1
        else:
            c.failed += 1
        (log.info if verdict.passed else log.warning)(
            "spot_check.verdict", job_id=sample.job_id.hex(), node_id=sample.node_id.hex(),
            checker=checker.node_id.hex(), passed=verdict.passed, detail=verdict.detail, cost=cost, unit=unit.value)
        await self._report(sample, verdict, checker.node_id)
        return verdict

    async def _report(self, sample: Sample, verdict: verdicts.Verdict, checker_id: bytes) -> None:
        calls = [("ReportCheck", self._registry.ReportCheck, rpb.ReportCheckRequest(
            node_id=sample.node_id, job_id=sample.job_id, kind=rpb.CHECK_KIND_SPOT_CHECK, passed=verdict.passed,
            detail=verdict.detail, checker_node_id=checker_id))]
        if self._metering is not None:
            calls.append(("RecordCheckResult", self._metering.RecordCheckResult, mpb.RecordCheckResultRequest(
                job_id=sample.job_id, passed=verdict.passed, detail=verdict.detail)))
        for name, call, req in calls:
            if not await _call_with_retries(call, req):
                self.counters.reports_failed += 1
                log.error("spot_check.report_failed", rpc=name, job_id=sample.job_id.hex(), passed=verdict.passed)

    def snapshot(self) -> dict:
        """The counters and the budget, for logs, tests and tools."""
        out = dataclasses.asdict(self.counters)
        for unit, pool in self.sampler.pools.items():
            out[f"served_{unit.value}"], out[f"checked_{unit.value}"] = pool.served, pool.spent
        out["queued"] = self._queue.qsize()
        return out

    def __repr__(self) -> str:
        return f"SpotChecker({json.dumps(self.snapshot())})"


async def _call_with_retries(call, req) -> bool:
    delay = REPORT_RETRY_S
    for attempt in range(REPORT_TRIES):
        try:
            await call(req, timeout=REPORT_TIMEOUT_S)
            return True
        except grpc.aio.AioRpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or \
                    attempt == REPORT_TRIES - 1:
                log.error("spot_check.rpc_failed", code=e.code().name, details=e.details())
                return False
        await asyncio.sleep(delay)
        delay *= 2
    return False
