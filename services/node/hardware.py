"""The node's hardware inventory: GPUs through NVML (nvidia-ml-py) when a
driver is present, CPU cores and RAM from the operating system."""

from __future__ import annotations

import os
from collections import Counter

import structlog

from idlegrid.registry.v1 import registry_pb2 as pb

log = structlog.get_logger("node.hardware")


class Nvml:
    """An initialised NVML session; :meth:`open` returns None where there is
    no NVIDIA driver (a CPU-only node)."""

    def __init__(self, module) -> None:
        self._nvml = module

    @classmethod
    def open(cls) -> Nvml | None:
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            log.info("node.no_nvml", reason=str(e))
            return None
        return cls(pynvml)

    def close(self) -> None:
        self._nvml.nvmlShutdown()

    def _handles(self) -> list:
        nvml = self._nvml
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    def gpus(self) -> list[pb.Gpu]:
        """GPUs grouped by (name, memory)."""
        kinds: Counter[tuple[str, int]] = Counter()
        for h in self._handles():
            name = self._nvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            kinds[(name, int(self._nvml.nvmlDeviceGetMemoryInfo(h).total))] += 1
        return [pb.Gpu(name=n, memory_bytes=m, count=c) for (n, m), c in sorted(kinds.items())]

    def utilization_pct(self) -> int | None:
        """Mean utilisation over all GPUs in NVML's last sample period."""
        try:
            handles = self._handles()
            if not handles:
                return None
            return round(sum(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles) / len(handles))
        except self._nvml.NVMLError:
            return None


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def detect() -> pb.Hardware:
    """GPUs (none on a CPU-only node), logical CPU cores available to us, RAM."""
    nvml = Nvml.open()
    try:
        found = nvml.gpus() if nvml is not None else []
    finally:
        if nvml is not None:
            nvml.close()
    hw = pb.Hardware(gpus=found, cpu_cores=cpu_cores(), memory_bytes=memory_bytes())
    log.info("node.hardware", gpus=[f"{g.count}x {g.name}" for g in hw.gpus], cpu_cores=hw.cpu_cores,
             memory_gib=round(hw.memory_bytes / 2**30, 1))
    return hw
