"""What the agent reports in each heartbeat: an estimate of the node's load
from its own Triton.

Triton exposes completions, not arrivals, so in-flight work is estimated
from the statistics extension with Little's law over the last sampling
window (completed requests × mean latency ÷ window, rounded up when any
completed). Queue depth is Triton's ``nv_inference_pending_request_count``
gauge when the metrics URL is known. GPU utilisation comes from NVML.
A request that has run for longer than the window without completing is not
seen: the scheduler, which dispatches, knows better and should prefer its
own count.
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.request
from typing import Protocol

import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from idlegrid.node.hardware import Nvml
from idlegrid.registry.v1 import registry_pb2 as pb

METRICS_TIMEOUT_S = 2.0
METRICS_BYTES_MAX = 4 << 20
LOAD_COUNT_MAX = 1_000_000


class LoadProbe(Protocol):
    async def sample(self) -> pb.NodeLoad: ...

    async def close(self) -> None: ...


class TritonLoadProbe:
    def __init__(self, triton_url: str, *, metrics_url: str | None = None, timeout_s: float = 2.0,
                 nvml: Nvml | None = None) -> None:
        self._client = aioclient.InferenceServerClient(url=triton_url)
        self._metrics_url = metrics_url
        self._timeout_s = timeout_s
        self._nvml = nvml
        self._last: tuple[float, int, int] | None = None  # (time, completed, completed ns)

    async def close(self) -> None:
        await self._client.close()
        if self._nvml is not None:
            self._nvml.close()

    async def _totals(self) -> tuple[int, int]:
        stats = await self._client.get_inference_statistics(client_timeout=self._timeout_s)
        count = ns = 0
        for m in stats.model_stats:
            s = m.inference_stats
            count += s.success.count + s.fail.count
            ns += s.success.ns + s.fail.ns
        return count, ns

    async def _pending(self) -> int:
        if self._metrics_url is None:
            return 0

        def fetch() -> int:
            with urllib.request.urlopen(self._metrics_url, timeout=METRICS_TIMEOUT_S) as r:  # noqa: S310
                text = r.read(METRICS_BYTES_MAX).decode(errors="replace")
            return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                       if line.startswith("nv_inference_pending_request_count"))

        try:
            return await asyncio.to_thread(fetch)
        except (OSError, ValueError, IndexError):
            return 0

    async def sample(self) -> pb.NodeLoad:
        load = pb.NodeLoad()
        try:
            count, ns = await self._totals()
        except InferenceServerException:
            return load  # Triton unreachable: nothing to report; the registry keeps the lease
        now = time.monotonic()
        if self._last is not None:
            t0, c0, ns0 = self._last
            done, busy_ns, window_s = count - c0, ns - ns0, max(now - t0, 1e-3)
            if done > 0 and busy_ns >= 0:
                mean_s = busy_ns / done / 1e9
                load.recent_latency_us = min(int(mean_s * 1e6), 3_600_000_000)
                load.in_flight = min(math.ceil(done * mean_s / window_s), LOAD_COUNT_MAX)
        self._last = (now, count, ns)
        load.queue_depth = min(await self._pending(), LOAD_COUNT_MAX)
        if self._nvml is not None:
            pct = self._nvml.utilization_pct()
            if pct is not None:
                load.gpu_utilization_pct = pct
        return load
