"""``idlegrid up`` stops at any moment: a SIGINT or SIGTERM at any step of
start-up (the database just started, the demo node loading) stops every part
started so far and the embedded PostgreSQL, and leaves no process behind; a
second Ctrl-C forces the stop and still stops PostgreSQL."""

from __future__ import annotations

import signal

import pytest

from tests.cli.support import Up, describe, is_demo_child, processes_of
from tests.harness.polling import eventually

pytestmark = pytest.mark.slow

STOP_BOUND_S = 90.0  # keeps a broken test from hanging; not what the test checks


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def runs():
    started: list[Up] = []
    yield started
    for up in started:
        up.cleanup()


async def _stopped_cleanly(up: Up) -> None:
    code = up.wait(STOP_BOUND_S)
    left = processes_of(up.home)
    assert not left, f"left behind: {describe(left)}\n{up.output}"
    assert "stopped." in up.output, up.output
    assert code == 0, up.output


async def test_sigint_right_after_the_database_step_stops_everything(home, runs):
    """The database is up and the services are starting: Ctrl-C stops what
    started, PostgreSQL last, and nothing is left running."""
    up = Up(home, demo_node=False)
    runs.append(up)
    await eventually(lambda: up.printed("[2/8]"), what="the step after the database")
    up.signal(signal.SIGINT)
    await _stopped_cleanly(up)
    assert "[8/8]" not in up.output or "idlegrid is up" not in up.output


async def test_sigterm_after_start_up_stops_everything(home, runs):
    """SIGTERM (what a service manager sends) stops like Ctrl-C; the next
    run in the same home starts again on the same data."""
    up = Up(home, demo_node=False)
    runs.append(up)
    await eventually(lambda: up.printed("idlegrid is up"), what="start-up")
    up.signal(signal.SIGTERM)
    await _stopped_cleanly(up)
    again = Up(home, demo_node=False, ports=up.ports, relay_port=up.relay_port)
    runs.append(again)
    await eventually(lambda: again.printed("idlegrid is up") or again.proc.poll() is not None, what="the rerun")
    assert "idlegrid is up" in again.output, again.output
    again.signal(signal.SIGINT)
    await _stopped_cleanly(again)


def _demo_loading(up: Up) -> bool:
    return up.printed("[9/9]") and any(is_demo_child(pid) for pid in processes_of(up.home))


async def test_sigint_while_the_demo_node_loads_stops_promptly(home, runs):
    """Ctrl-C while the demo Triton loads is not held until it is ready: the
    Triton child and its tritonserver stop, then the services and PostgreSQL."""
    up = Up(home, demo_node=True)
    runs.append(up)
    await eventually(lambda: _demo_loading(up), what="the demo Triton loading")
    up.signal(signal.SIGINT)
    await _stopped_cleanly(up)
    assert "idlegrid is up" not in up.output


async def test_a_second_sigint_forces_the_stop_and_still_stops_postgres(home, runs):
    """Two Ctrl-Cs while the demo node loads: the rest is killed rather than
    stopped cleanly, and PostgreSQL still stops."""
    up = Up(home, demo_node=True)
    runs.append(up)
    await eventually(lambda: _demo_loading(up), what="the demo Triton loading")
    up.signal(signal.SIGINT)
    await eventually(lambda: up.printed("interrupted"), what="the first signal taken")
    up.signal(signal.SIGINT)
    await _stopped_cleanly(up)
