"""Hardware detection on this machine: CPU-only when NVML has no driver."""

from __future__ import annotations

import os

from idlegrid.node import hardware


def test_detection_reports_cores_and_memory_and_gpus_only_with_a_driver():
    hw = hardware.detect()
    assert hw.cpu_cores == len(os.sched_getaffinity(0)) >= 1
    assert hw.memory_bytes > 0
    nvml = hardware.Nvml.open()
    if nvml is None:
        assert list(hw.gpus) == []
    else:
        try:
            assert sum(g.count for g in hw.gpus) == nvml._nvml.nvmlDeviceGetCount()
            assert all(g.memory_bytes > 0 and g.name for g in hw.gpus)
        finally:
            nvml.close()
