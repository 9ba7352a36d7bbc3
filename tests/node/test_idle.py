"""Idle means idle: the pure policy (foreign processes, unexplained
utilisation and memory, the serving schedule, power and temperature limits),
the node.toml keys, and the agent pausing and resuming a real registry's node
when the hardware seam (a fake GPU the test drives) or the clock says so."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from idlegrid.common.errors import ConfigError
from idlegrid.node import config_file
from idlegrid.node.agent import AgentOptions, NodeAgent
from idlegrid.node.config_file import NodeConfig
from idlegrid.node.gpu_activity import FakeActivity, NoGpu
from idlegrid.node.idle_policy import (
    MIB,
    NOTHING,
    GpuProcess,
    GpuReading,
    IdlePolicy,
    parse_window,
    pause_reason,
)
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.node.support import ScriptedProbe, pricing, running
from tests.registry.conftest import LOOPBACK
from tests.registry.support import echo_offer, hardware, unique_endpoint

NOON = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
GAME = GpuProcess(4242, "game.exe", 3 << 30)


ANY_TIME = IdlePolicy()


def reason(reading=NOTHING, *, busy=False, policy=ANY_TIME, now=NOON, paused=False):
    return pause_reason(reading, triton_busy=busy, policy=policy, now=now, paused=paused)


def test_a_foreign_process_pauses_and_is_named():
    assert reason() is None
    r = reason(GpuReading(foreign=(GAME, GpuProcess(7, "blender"))))
    assert "game.exe" in r and "4242" in r and "1 more" in r


def test_utilisation_pauses_only_when_triton_does_not_explain_it_and_memory_beyond_triton_pauses():
    busy = GpuReading(utilization_pct=90)
    assert "90 %" in reason(busy)
    assert reason(busy, busy=True) is None
    assert reason(GpuReading(unexplained_memory_bytes=100 * MIB)) is None
    assert "512 MiB" in reason(GpuReading(unexplained_memory_bytes=512 * MIB))


def test_the_schedule_crosses_midnight_in_its_own_time_zone():
    nights = IdlePolicy(serve=(parse_window("22:00-07:00"),), timezone=ZoneInfo("Europe/Berlin"))
    assert "serving schedule (22:00-07:00)" in reason(policy=nights, now=NOON)
    assert reason(policy=nights, now=datetime(2026, 6, 1, 21, 30, tzinfo=UTC)) is None  # 23:30 in Berlin
    assert reason(policy=nights, now=datetime(2026, 6, 1, 4, 59, tzinfo=UTC)) is None   # 06:59 in Berlin
    assert reason(policy=nights, now=datetime(2026, 6, 1, 5, 0, tzinfo=UTC)) is not None  # 07:00 in Berlin
    for bad in ("22:00", "25:00-01:00", "08:00-08:00"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_power_and_temperature_limits_resume_only_below_a_margin():
    hot = IdlePolicy(temperature_c_max=80, power_w_max=200)
    assert "85 °C" in reason(GpuReading(temperature_c=85), policy=hot)
    assert reason(GpuReading(temperature_c=78), policy=hot) is None
    assert reason(GpuReading(temperature_c=78), policy=hot, paused=True) is not None  # not yet cool enough
    assert reason(GpuReading(temperature_c=75), policy=hot, paused=True) is None
    assert "250 W" in reason(GpuReading(power_w=250), policy=hot)


def test_node_toml_schedule_and_idle_keys_parse_and_mistakes_name_their_key():
    c = config_file.parse('[models.echo]\nprice_per_request = 1\n'
                          '[schedule]\nserve = ["22:00-07:00", "12:00-13:00"]\ntimezone = "Europe/Berlin"\n'
                          '[idle]\npoll_interval_ms = 500\npower_w_max = 300\ntemperature_c_max = 83\n'
                          'foreign_memory_mib_max = 64\ntriton_process_names = ["tritonserver", "python3"]\n')
    idle = c.idle
    assert [str(w) for w in idle.serve] == ["22:00-07:00", "12:00-13:00"] and idle.timezone.key == "Europe/Berlin"
    assert (idle.poll_interval_s, idle.power_w_max, idle.temperature_c_max) == (0.5, 300, 83)
    assert idle.foreign_memory_bytes_max == 64 * MIB and idle.triton_process_names == ("tritonserver", "python3")
    assert config_file.parse('[models.echo]\nprice_per_request = 1\n').idle == IdlePolicy()
    for text, key in (('[schedule]\nserve = ["7-8"]', "schedule.serve"), ('[schedule]\ntimezone = "Mars/Base"',
                      "timezone"), ('[idle]\npoll_interval_ms = 5', "poll_interval_ms"),
                      ('[idle]\nfan = 1', "fan"), ('[idle]\ntemperature_c_max = -1', "temperature_c_max")):
        with pytest.raises(ConfigError, match=key):
            config_file.parse('[models.echo]\nprice_per_request = 1\n' + text)


def test_a_machine_without_nvml_reports_nothing_foreign():
    assert NoGpu().read(frozenset()) == GpuReading()


@pytest.fixture
async def fast_agents(make_registry):
    return await make_registry(RegistrySettings(**LOOPBACK, heartbeat_interval_ms=200, lease_intervals=20,
                                                sweep_interval_ms=50, skip_verification=True))


def agent_for(reg, p, *, idle: IdlePolicy, activity, clock=lambda: NOON) -> NodeAgent:
    nc = NodeConfig(models=pricing().models, idle=idle)
    return NodeAgent(AgentOptions(registry_addr=reg.addr, provider_token=p.token, triton_url=unique_endpoint(),
                                  node_config=nc),
                     hardware_inventory=hardware(), offers=[echo_offer()], probe=ScriptedProbe(),
                     activity=activity, clock=clock)


@pytest.mark.slow  # a scenario: a real registry and the agent's loops
async def test_the_owner_starting_a_gpu_process_pauses_the_node_and_its_end_resumes_it(fast_agents):
    reg, gpu = fast_agents, FakeActivity()
    p = await reg.provider()
    agent = agent_for(reg, p, idle=IdlePolicy(poll_interval_s=0.05), activity=gpu)
    async with running(agent):
        await agent.wait_for(pb.NODE_STATE_READY)
        gpu.reading = GpuReading(foreign=(GAME,))
        n = await reg.wait_state(agent.node_id, pb.NODE_STATE_PAUSED)
        assert n.state_reason == pb.STATE_REASON_PAUSED and "game.exe (pid 4242)" in n.state_detail
        gpu.reading = GpuReading()
        n = await reg.wait_state(agent.node_id, pb.NODE_STATE_READY)
        assert n.state_reason == pb.STATE_REASON_RESUMED


@pytest.mark.slow  # a scenario: a real registry and the agent's loops
async def test_the_serving_schedule_pauses_outside_its_windows_by_the_injected_clock(fast_agents):
    reg, now = fast_agents, [NOON]
    p = await reg.provider()
    nights = IdlePolicy(serve=(parse_window("22:00-07:00"),), timezone=UTC, poll_interval_s=0.05)
    agent = agent_for(reg, p, idle=nights, activity=FakeActivity(), clock=lambda: now[0])
    async with running(agent):
        n = await reg.wait_state(agent.node_id, pb.NODE_STATE_PAUSED)
        assert "outside the serving schedule (22:00-07:00)" in n.state_detail
        now[0] = NOON.replace(hour=23)
        await reg.wait_state(agent.node_id, pb.NODE_STATE_READY)
