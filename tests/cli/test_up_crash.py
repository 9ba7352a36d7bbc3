"""``idlegrid up`` restarts after a crash: every process of a running ``up``
is SIGKILLed while partners send traffic (PostgreSQL included, as a power cut
or the OOM killer would), and its ``postmaster.pid`` names a pid that is
alive again as another process (what a reboot makes likely). The next ``up``
in the same home recovers on its own: the stale file is removed, PostgreSQL
replays its WAL, every answered job is still recorded and the books verify."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid

import asyncpg
import httpx
import pytest

from tests.cli.support import Up, describe, processes_of, up_env
from tests.harness.polling import eventually

pytestmark = pytest.mark.slow

CHAT = {"model": "smollm2-135m-instruct", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
TOPUP_MICROS = 1_000


async def _traffic(up: Up, demo: dict, answered: list[str], stop: asyncio.Event) -> None:
    """Chat requests and top-ups until ``stop``; the id of each answered job
    goes to ``answered``. Errors once ``up`` is killed are expected."""
    consumer = {"Authorization": f"Bearer {demo['consumer_key']}"}
    admin = {"Authorization": f"Bearer {demo['admin_key']}"}
    async with httpx.AsyncClient(base_url=up.gateway_url, timeout=30) as c:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                r = await c.post("/v1/chat/completions", json=CHAT, headers=consumer)
                if r.status_code == 200:
                    answered.append(r.json()["id"].removeprefix("chatcmpl-"))
                await c.post(f"/v1/admin/accounts/{demo['consumer_account_id']}/topup", headers=admin,
                             json={"amount_micros": TOPUP_MICROS, "idempotency_key": f"crash-{uuid.uuid4()}"})
            except httpx.HTTPError:
                await asyncio.sleep(0.05)


def _socket_url(home) -> str:
    lines = (home / "pg" / "postmaster.pid").read_text().splitlines()
    return f"postgresql://postgres:@/postgres?host={lines[4].strip()}"


async def test_up_recovers_after_every_process_is_killed(tmp_path):
    home = tmp_path / "home"
    up = Up(home, demo_node=True)
    stand_in = None
    again = None
    try:
        await eventually(lambda: up.printed("idlegrid is up") or up.proc.poll() is not None,
                         what="start-up", timeout_s=600)
        assert "idlegrid is up" in up.output, up.output
        demo = json.loads((home / "demo.json").read_text())
        answered: list[str] = []
        stop = asyncio.Event()
        traffic = [asyncio.create_task(_traffic(up, demo, answered, stop)) for _ in range(3)]
        await eventually(lambda: len(answered) >= 5, what="jobs answered", timeout_s=300)
        up.kill_everything()  # while the traffic runs
        stop.set()
        await asyncio.gather(*traffic)
        assert not processes_of(home), describe(processes_of(home))
        # After a reboot the dead postmaster's pid is often another live process.
        stand_in = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(600)")
        pidfile = home / "pg" / "postmaster.pid"
        lines = pidfile.read_text().splitlines()
        pidfile.write_text("\n".join([str(stand_in.pid), *lines[1:]]) + "\n")

        again = Up(home, demo_node=False, ports=up.ports, relay_port=up.relay_port)
        await eventually(lambda: again.printed("idlegrid is up") or again.proc.poll() is not None,
                         what="the restart", timeout_s=300)
        assert "idlegrid is up" in again.output, again.output
        conn = await asyncpg.connect(_socket_url(home))
        try:
            recorded = {r["job_id"].hex for r in await conn.fetch("SELECT job_id FROM metering.usage")}
        finally:
            await conn.close()
        missing = set(answered) - recorded
        assert not missing, f"{len(missing)} answered jobs lost of {len(answered)}"
        verify = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "idlegrid.cli", "ledger", "verify", env=up_env(home, up.ports),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        said, _ = await verify.communicate()
        assert verify.returncode == 0, said.decode()
        again.signal(signal.SIGINT)
        assert again.wait() == 0, again.output
        assert not processes_of(home), describe(processes_of(home))
    finally:
        for run in (up, again):
            if run is not None:
                run.cleanup()
        if stand_in is not None:
            stand_in.kill()
            await stand_in.wait()
