"""Idle means idle on a real GPU: a real foreign CUDA process pauses the
node, and its end resumes it, through the agent's pause loop and the real
NVML reading (gpu_activity.NvmlActivity). The registry's SetPaused is a
recorder here; tests/node/test_idle.py drives the same loop against a real
registry through the seam's fake.

Runs only where NVML sees a GPU (the lent GPU machine); it skips elsewhere.
It needs only the node package, structlog, protobuf and nvidia-ml-py, so it
runs with ``pytest --noconftest`` on a machine without the rest of the stack.
"""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from idlegrid.node.gpu_activity import NoGpu, NvmlActivity
from idlegrid.node.idle_policy import IdlePolicy
from idlegrid.node.pausing import PauseLoop
from idlegrid.registry.v1 import registry_pb2 as pb

# The owner's program: a CUDA context and 1 GiB through the driver API alone,
# held until stdin closes.
HOLDER = r'''
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
def ok(r, what):
    if r != 0:
        sys.exit(f"{what} failed with CUDA error {r}")
ok(cuda.cuInit(0), "cuInit")
dev = ctypes.c_int()
ok(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
ctx = ctypes.c_void_p()
ok(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
ok(cuda.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
ptr = ctypes.c_uint64()
ok(cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(1 << 30)), "cuMemAlloc")
print("holding", flush=True)
sys.stdin.read()
'''

DEADLINE_S = 60.0  # liveness only: the figures are printed, not asserted


class RegistryRecorder:
    """The registry's side of SetPaused: the node's state and every call."""

    def __init__(self) -> None:
        self.state, self.detail = pb.NODE_STATE_READY, ""
        self.calls: list[tuple[bool, str, float]] = []

    def read(self) -> tuple[int, str]:
        return self.state, self.detail

    async def set_paused(self, paused: bool, reason: str) -> None:
        self.calls.append((paused, reason, time.monotonic()))
        self.state = pb.NODE_STATE_PAUSED if paused else pb.NODE_STATE_READY
        self.detail = reason if paused else ""


async def until(check, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > DEADLINE_S:
            raise AssertionError(f"{what}: not within {DEADLINE_S:.0f} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def scenario(activity) -> None:
    registry = RegistryRecorder()
    loop = PauseLoop(activity=activity, policy=IdlePolicy(poll_interval_s=0.25), state=registry.read,
                     set_paused=registry.set_paused, triton_busy=lambda: False, triton_pids=frozenset)
    await loop.poll()
    assert registry.calls == [], f"the GPU is not idle before the check: {registry.calls}"
    loop.start()
    owner = await asyncio.create_subprocess_exec(sys.executable, "-c", HOLDER, stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(owner.stdout.readline(), DEADLINE_S)
        assert line.strip() == b"holding", f"the CUDA program did not start (exit {owner.returncode})"
        to_pause = await until(lambda: registry.state == pb.NODE_STATE_PAUSED, "pause")
        reason = registry.detail
        print(f"\npaused {to_pause:.2f} s after the CUDA process took the GPU: {reason}")
        assert f"pid {owner.pid}" in reason, reason
    finally:
        owner.stdin.close()
        await owner.wait()
    to_resume = await until(lambda: registry.state == pb.NODE_STATE_READY, "resume")
    print(f"resumed {to_resume:.2f} s after the CUDA process ended; calls: "
          f"{[(p, r) for p, r, _ in registry.calls]}")
    await loop.stop()
    assert [p for p, _, _ in registry.calls] == [True, False]


def test_a_foreign_cuda_process_pauses_the_node_and_its_end_resumes_it():
    activity = NvmlActivity.open()
    if isinstance(activity, NoGpu):
        pytest.skip("no NVIDIA GPU (NVML) on this machine")
    asyncio.run(scenario(activity))
