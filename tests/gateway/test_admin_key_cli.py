"""The bootstrap admin key never reaches a log stream (issue 13):
``idlegrid gateway create-admin-key`` writes it to a new 0600 file, or to
stdout only when stdout is a terminal or ``--stdout`` asks; piped into a log
without either, it refuses before making a key. The key it makes expires and
is audited (actor "cli")."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from idlegrid.bench.kit import free_port
from idlegrid.gateway import service as gateway_service
from idlegrid.gateway.settings import GatewaySettings

IDLEGRID = str(Path(sys.executable).parent / "idlegrid")


@pytest.fixture(scope="module")
async def gw(config, db_url):
    """A gateway on the module's database (its backends are not needed)."""
    dead = {f"{n}_addr": f"127.0.0.1:{free_port()}" for n in ("ledger", "scheduler", "metering", "registry")}
    running = await gateway_service.start(config, port=0, database_url=db_url, settings=GatewaySettings(), **dead)
    yield running
    await running.stop(1)


async def create_admin_key(db_url: str, home: Path, *args: str) -> tuple[int, str, str]:
    """Runs the command with stdout and stderr piped (not a terminal)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDLEGRID_")}
    env.update(IDLEGRID_DATABASE_URL=db_url, IDLEGRID_HOME=str(home), IDLEGRID_LOG_FORMAT="json")
    proc = await asyncio.create_subprocess_exec(IDLEGRID, "gateway", "create-admin-key", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def admin_keys(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM gateway.api_keys WHERE scope = 'admin'")
    finally:
        await conn.close()


async def test_piped_stdout_without_a_flag_is_refused_and_makes_no_key(gw, db_url, tmp_path):
    before = await admin_keys(db_url)
    rc, out, err = await create_admin_key(db_url, tmp_path)
    assert rc == 2 and out == "" and "--out FILE" in err
    assert await admin_keys(db_url) == before


async def test_the_key_goes_to_a_new_0600_file_works_expires_and_is_audited(gw, db_url, tmp_path):
    path = tmp_path / "admin.key"
    rc, out, err = await create_admin_key(db_url, tmp_path, "--out", str(path))
    assert rc == 0, err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    key_id = key.split("_")[1]
    assert out == "" and key not in err and key.split("_", 2)[2] not in err and key_id in err
    async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as c:
        r = await c.get("/v1/admin/audit")
    assert r.status_code == 200, r.text
    entry = next(e for e in r.json()["data"] if e["key_id"] == key_id)
    assert (entry["actor"], entry["action"], entry["result"]) == ("cli", "create_key", "ok")
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT expires_at IS NOT NULL FROM gateway.api_keys WHERE key_id = $1", key_id)
    finally:
        await conn.close()
    # Never over an existing file.
    before = await admin_keys(db_url)
    rc, out, err = await create_admin_key(db_url, tmp_path, "--out", str(path))
    assert rc == 2 and "exists" in err and path.read_text().strip() == key
    assert await admin_keys(db_url) == before


async def test_stdout_only_when_asked(gw, db_url, tmp_path):
    rc, out, err = await create_admin_key(db_url, tmp_path, "--stdout")
    assert rc == 0, err
    key = out.strip()
    assert key.startswith("ig_") and key not in err
