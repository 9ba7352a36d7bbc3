"""The hardware seam of "idle means idle": what is running on the node's GPUs
besides Triton.

- :class:`NvmlActivity`: NVML (nvidia-ml-py). Compute and graphics processes
  other than Triton's (Triton's: the pids the agent knows, e.g. the demo
  Triton it started, and processes named as in ``triton_process_names``),
  utilisation, memory in use beyond Triton's processes, power draw and
  temperature (the highest over the GPUs).
- :class:`NoGpu`: a machine without NVML (the CPU demo) reports nothing
  foreign, ever.
- :class:`FakeActivity`: tests set the reading the agent sees next.

``read()`` is blocking (NVML calls): the agent runs it in a thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import structlog

from idlegrid.node.hardware import Nvml
from idlegrid.node.idle_policy import NOTHING, GpuProcess, GpuReading

log = structlog.get_logger("node.gpu_activity")

PROCESSES_MAX = 64  # processes looked at per GPU


class GpuActivity(Protocol):
    def read(self, triton_pids: frozenset[int]) -> GpuReading: ...

    def close(self) -> None: ...


class NoGpu:
    def read(self, triton_pids: frozenset[int]) -> GpuReading:
        return NOTHING

    def close(self) -> None:
        pass


class FakeActivity:
    """The tests' GPU: ``fake.reading = GpuReading(...)``; every read sees it."""

    def __init__(self, reading: GpuReading = NOTHING) -> None:
        self.reading = reading
        self.reads = 0

    def read(self, triton_pids: frozenset[int]) -> GpuReading:
        self.reads += 1
        return GpuReading(foreign=tuple(p for p in self.reading.foreign if p.pid not in triton_pids),
                          utilization_pct=self.reading.utilization_pct,
                          unexplained_memory_bytes=self.reading.unexplained_memory_bytes,
                          power_w=self.reading.power_w, temperature_c=self.reading.temperature_c)

    def close(self) -> None:
        pass


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class NvmlActivity:
    def __init__(self, nvml: Nvml, *, triton_process_names: tuple[str, ...] = ("tritonserver",)) -> None:
        self._nvml = nvml
        self._m = nvml._nvml
        self._names = frozenset(triton_process_names)

    @classmethod
    def open(cls, **kw) -> GpuActivity:
        """NVML where there is a driver, else :class:`NoGpu`."""
        nvml = Nvml.open()
        return NoGpu() if nvml is None else cls(nvml, **kw)

    def close(self) -> None:
        self._nvml.close()

    def _processes(self, handle) -> list:
        m, out = self._m, []
        for get in (m.nvmlDeviceGetComputeRunningProcesses, m.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                out.extend(get(handle)[:PROCESSES_MAX])
            except m.NVMLError:
                continue
        return out

    def read(self, triton_pids: frozenset[int]) -> GpuReading:
        m = self._m
        foreign: dict[int, GpuProcess] = {}
        util = unexplained = 0
        power = temp = 0.0
        for h in self._nvml._handles():
            triton_bytes = 0
            for p in self._processes(h):
                used = int(p.usedGpuMemory or 0)
                name = process_name(p.pid)
                if p.pid in triton_pids or name in self._names:
                    triton_bytes += used
                elif p.pid not in foreign:
                    foreign[p.pid] = GpuProcess(p.pid, name, used)
            try:
                util = max(util, int(m.nvmlDeviceGetUtilizationRates(h).gpu))
                used_total = int(m.nvmlDeviceGetMemoryInfo(h).used)
                # NVML counts the driver's own reservation as used: only what
                # processes hold counts, and Triton's share is explained.
                listed = sum(p.memory_bytes for p in foreign.values())
                unexplained = max(unexplained, min(listed, max(0, used_total - triton_bytes)))
                power = max(power, m.nvmlDeviceGetPowerUsage(h) / 1000.0)
                temp = max(temp, float(m.nvmlDeviceGetTemperature(h, m.NVML_TEMPERATURE_GPU)))
            except m.NVMLError as e:
                log.debug("node.nvml_read_failed", error=str(e))
        return GpuReading(foreign=tuple(foreign.values()), utilization_pct=util,
                          unexplained_memory_bytes=unexplained, power_w=power, temperature_c=temp)
