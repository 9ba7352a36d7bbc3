"""Idle means idle: whether the node may serve now, as a pure function of the
GPU readings, the serving schedule, the limits and the time.

    pause_reason(reading, triton_busy, policy, now, paused) -> str | None

The first signal that holds names the pause (None: serve):
1. a process on the GPU that is not Triton's (the owner's game, a training
   run): NVML's compute and graphics processes;
2. GPU utilisation not explained by Triton (Triton has no work in flight),
   or GPU memory not explained by Triton's processes;
3. outside the serving schedule (``[schedule] serve`` windows, local time of
   ``timezone``);
4. over the power or temperature limit. A node paused for heat resumes only
   ``HYSTERESIS`` below the limit, so it does not flap at the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, tzinfo

HYSTERESIS = 0.95  # resume below 95 % of a power or temperature limit
MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class GpuProcess:
    pid: int
    name: str
    memory_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuReading:
    """One look at the node's GPUs (every field summed or maxed over them).
    ``foreign``: processes that are not Triton's; ``unexplained_memory_bytes``:
    memory in use beyond Triton's processes."""

    foreign: tuple[GpuProcess, ...] = ()
    utilization_pct: int = 0
    unexplained_memory_bytes: int = 0
    power_w: float = 0.0
    temperature_c: float = 0.0


NOTHING = GpuReading()  # what a machine without NVML reports


@dataclass(frozen=True, slots=True)
class Window:
    """A daily serving window in minutes after midnight; ``end < start``
    crosses midnight ("22:00-07:00")."""

    start_min: int
    end_min: int

    def holds(self, minute: int) -> bool:
        if self.start_min <= self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min

    def __str__(self) -> str:
        return f"{self.start_min // 60:02d}:{self.start_min % 60:02d}-{self.end_min // 60:02d}:{self.end_min % 60:02d}"


@dataclass(frozen=True, slots=True, kw_only=True)
class IdlePolicy:
    serve: tuple[Window, ...] = ()          # empty: at any time
    timezone: tzinfo | None = None          # None: the machine's local time
    power_w_max: float = 0.0                # 0: no limit
    temperature_c_max: float = 0.0          # 0: no limit
    foreign_utilization_pct_max: int = 10   # utilisation Triton does not explain
    foreign_memory_bytes_max: int = 256 * MIB
    triton_process_names: tuple[str, ...] = ("tritonserver",)
    poll_interval_s: float = 1.0
    ignore_pids: frozenset[int] = field(default_factory=frozenset)

    def serving_now(self, now: datetime) -> bool:
        if not self.serve:
            return True
        local = now.astimezone(self.timezone)
        minute = local.hour * 60 + local.minute
        return any(w.holds(minute) for w in self.serve)


def parse_window(text: str) -> Window:
    """"HH:MM-HH:MM" → Window; ValueError otherwise."""
    start, sep, end = text.partition("-")
    if not sep:
        raise ValueError(f"{text!r} is not HH:MM-HH:MM")
    a, b = time.fromisoformat(start.strip()), time.fromisoformat(end.strip())
    w = Window(a.hour * 60 + a.minute, b.hour * 60 + b.minute)
    if w.start_min == w.end_min:
        raise ValueError(f"{text!r} is an empty window")
    return w


def pause_reason(reading: GpuReading, *, triton_busy: bool, policy: IdlePolicy, now: datetime,
                 paused: bool = False) -> str | None:
    """Why the node must not take new work now, or None."""
    if reading.foreign:
        p = reading.foreign[0]
        more = f" and {len(reading.foreign) - 1} more" if len(reading.foreign) > 1 else ""
        return f"the owner is using the GPU: process {p.name or '?'} (pid {p.pid}){more}"
    if not triton_busy and reading.utilization_pct > policy.foreign_utilization_pct_max:
        return f"the GPU is {reading.utilization_pct} % busy with work that is not Triton's"
    if reading.unexplained_memory_bytes > policy.foreign_memory_bytes_max:
        return f"{reading.unexplained_memory_bytes // MIB} MiB of GPU memory is in use outside Triton"
    if not policy.serving_now(now):
        return "outside the serving schedule (" + ", ".join(str(w) for w in policy.serve) + ")"
    margin = HYSTERESIS if paused else 1.0
    if policy.power_w_max and reading.power_w > policy.power_w_max * margin:
        return f"power draw {reading.power_w:.0f} W is over the limit of {policy.power_w_max:.0f} W"
    if policy.temperature_c_max and reading.temperature_c > policy.temperature_c_max * margin:
        return f"GPU temperature {reading.temperature_c:.0f} °C is over the limit of {policy.temperature_c_max:.0f} °C"
    return None
