"""``idlegrid bench soak``: a chaos soak. The whole marketplace runs as
separate processes on loopback (ledger, metering, registry, relay,
scheduler, gateway, and a demo node: agent + demo Triton, joined through
the relay) on one PostgreSQL, while a few clients send mixed traffic to the
gateway (bench/soak_traffic.py) and a seeded chaos loop SIGKILLs and
restarts each process in turn (bench/chaos.py). It stops by itself. Then,
with everything running again and every usage record settled, it prints:

- ``answered``: requests that got a complete, successful answer;
- ``billed``: answered jobs whose usage record is settled with a cost > 0;
- ``lost_usage``: answered jobs with no usage record (must be 0);
- ``overspend_micros``: per consumer, what it was charged beyond what it was
  topped up, plus any account past its debits-must-not-exceed-credits bound
  (must be 0);
- ``verify_ok``: ``idlegrid ledger verify`` exited 0 (must be true);
- ``p50_ms`` / ``p99_ms``, ``kills`` per process kind, ``duration_s``, and the
  details (outcomes per request kind, recovery times, jobs lost near a kill).

It exits 1 when lost_usage > 0, overspend_micros > 0 or verify fails.
Usage is durable before the answer (issue 12): ``lost_usage_near_scheduler_kill``
(answered < ``NEAR_KILL_S`` before a scheduler kill) must be 0 too. "Settled"
= every lease cleared, its window on the ledger; a killed scheduler's leases
clear after their window + ``max_job_s`` (its IDLEGRID_SCHEDULER_MAX_JOB_S) +
``lease_slack_s`` (metering's IDLEGRID_CLEARING_LEASE_SLACK_S).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg

from idlegrid.bench.chaos import KINDS, NODE, SERVICES, ChaosLoop, ChaosPlan, Fleet
from idlegrid.bench.kit import free_port, p50_p99_ms, report
from idlegrid.bench.soak_traffic import Consumer, Traffic, topup

TOKEN = "soak-service-token"
CLIENTS = 4
INITIAL_MICROS = 100_000_000
SERVING_TIMEOUT_S = 180.0
QUIESCE_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 240.0  # a killed scheduler's leases clear MAX_JOB_S + 30 s after their window
VERIFY_TIMEOUT_S = 120.0
NEAR_KILL_S = 5.0
SEED_DEFAULT = 13
POLL_S = 0.1
SETTLED, PENDING = 2, 1  # metering.usage.settlement (SettlementState)
MAX_JOB_S = 60  # the soak scheduler's longest job (the clients time out first: REQUEST_TIMEOUT_S)
LEASES_UNCLEARED, WINDOW_STORED = [1, 2, 3], 1  # metering.leases.state; clearing_windows.state: not on the ledger


@dataclasses.dataclass(frozen=True)
class SoakOptions:
    duration_s: float = 60.0
    seed: int = SEED_DEFAULT
    clients: int = CLIENTS
    kinds: tuple[str, ...] = KINDS
    gap_s: tuple[float, float] = (2.0, 6.0)
    kills_max: int = 1000
    quiesce_scheduler: bool = False
    max_job_s: int = MAX_JOB_S  # the scheduler's IDLEGRID_SCHEDULER_MAX_JOB_S
    lease_slack_s: int = 30  # metering's IDLEGRID_CLEARING_LEASE_SLACK_S (a killed scheduler's leases wait it out)
    # Wait after each restart until the gateway answers again (recovery_s); off: kills overlap recoveries.
    serving_between_kills: bool = True  # kill the scheduler only with no request in flight (issue 12)
    db_url: str | None = None  # None: an embedded PostgreSQL in a fresh home
    home: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.duration_s <= 86_400:
            raise ValueError(f"duration_s must be in [1, 86400], got {self.duration_s}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if not 1 <= self.clients <= 64:
            raise ValueError(f"clients must be in [1, 64], got {self.clients}")


def failed(result: dict) -> list[str]:
    """What the soak found wrong (empty: it passed)."""
    out = []
    if result["lost_usage"]:
        out.append(f"{result['lost_usage']} answered job(s) have no usage record")
    if result["overspend_micros"]:
        out.append(f"overspend of {result['overspend_micros']} micros")
    if not result["verify_ok"]:
        out.append("ledger verify failed")
    return out


async def run(args, config) -> int:
    from idlegrid.common.errors import ConfigError

    duration, seed = getattr(args, "duration_s", None), getattr(args, "seed", None)
    try:
        opts = SoakOptions(duration_s=(20.0 if args.quick else 120.0) if duration is None else duration,
                           seed=SEED_DEFAULT if seed is None else seed)
    except ValueError as e:
        raise ConfigError(f"bench soak: {e}") from None
    os.environ.pop("IDLEGRID_DATABASE_URL", None)
    result = await soak(opts)
    report("chaos soak: mixed traffic while every process is SIGKILLed and restarted",
           result if args.json else _flat(result), as_json=args.json)
    problems = failed(result)
    for p in problems:
        sys.stderr.write(f"soak: FAILED: {p}\n")
    return 1 if problems else 0


def _flat(result: dict) -> dict:
    """The table form prints nested values as text; --json keeps them as they are."""
    return {k: (v if isinstance(v, (int, float, bool, str)) else str(v)) for k, v in result.items()}


async def soak(opts: SoakOptions) -> dict:
    """Runs one soak and returns its figures (see the module docstring)."""
    from idlegrid.cli.migrate import migrate_all
    from idlegrid.common import db

    home = opts.home or Path(tempfile.mkdtemp(prefix="idlegrid-soak-"))
    db_url = opts.db_url or await asyncio.to_thread(db.embedded_url, home)
    await migrate_all(db_url)
    ports = {n: free_port() for n in SERVICES}
    addrs = {n: f"127.0.0.1:{p}" for n, p in ports.items()}
    env = {"IDLEGRID_HOME": str(home), "IDLEGRID_DATABASE_URL": db_url, "IDLEGRID_SERVICE_TOKEN": TOKEN,
           "IDLEGRID_LOG_LEVEL": "warning", "IDLEGRID_LOG_FORMAT": "json", "IDLEGRID_SHUTDOWN_GRACE_S": "2",
           "IDLEGRID_SCHEDULER_MAX_JOB_S": str(opts.max_job_s),
           "IDLEGRID_CLEARING_LEASE_SLACK_S": str(opts.lease_slack_s),
           **{f"IDLEGRID_{n.upper()}_PORT": str(p) for n, p in ports.items()},
           **{f"IDLEGRID_{n.upper()}_ADDR": a for n, a in addrs.items()}}
    fleet = Fleet(home, env, addrs)
    conn = await asyncpg.connect(db_url)
    try:
        return await _soak(opts, fleet, conn, db_url)
    finally:
        fleet.stop()
        await conn.close()


async def _soak(opts: SoakOptions, fleet: Fleet, conn, db_url: str) -> dict:
    started = time.monotonic()
    await fleet.start("ledger")
    await asyncio.gather(*(fleet.start(k) for k in ("metering", "registry", "relay", "scheduler")))
    from idlegrid.cli.demo_catalog import seed_at

    await seed_at(fleet.addrs["registry"], token=TOKEN, actor="bench", cache_dir=fleet.home)  # the demo models
    await fleet.start("gateway")
    admin_key = await _admin_key(db_url)
    url = fleet.gateway_url
    token_file = fleet.home / "provider-token"
    consumers = await _setup(url, admin_key, opts.clients + 1, token_file)
    probe, consumers = consumers[0], consumers[1:]
    fleet.node_args = ["node", "start", "--demo", "--relay", fleet.addrs["relay"], "--registry",
                       fleet.addrs["registry"], "--provider-token-file", str(token_file),
                       "--node-id-file", str(fleet.home / "node-id")]
    await fleet.start(NODE)
    traffic = Traffic(url, admin_key, time.monotonic())
    await _serving(traffic, probe, fleet)
    setup_s = time.monotonic() - started

    traffic.t0 = time.monotonic()
    deadline = traffic.t0 + opts.duration_s
    recovery: dict[str, float] = {}

    async def before_kill(kind: str) -> None:
        if kind == "scheduler" and opts.quiesce_scheduler:
            # Issue 12: usage is recorded after the answer; wait for every record before the kill.
            traffic.gate.clear()
            await _quiesce(traffic, conn)

    async def after_restart(kind: str) -> None:
        if opts.serving_between_kills:
            t = time.monotonic()
            await _serving(traffic, probe, fleet)
            recovery[kind] = round(max(recovery.get(kind, 0.0), time.monotonic() - t), 3)
        traffic.gate.set()

    plan = ChaosPlan(seed=opts.seed, kinds=opts.kinds, gap_s=opts.gap_s, kills_max=opts.kills_max)
    chaos = ChaosLoop(fleet, plan, traffic.t0, before_kill, after_restart)

    async def chaos_then_stop() -> None:
        await chaos.run(deadline)
        traffic.stop.set()  # all kills done (kills_max) or time is up: the clients end too

    try:
        async with asyncio.TaskGroup() as tg:  # a failure anywhere cancels the rest
            tg.create_task(chaos_then_stop())
            for i, c in enumerate(consumers):
                tg.create_task(traffic.client(c, opts.seed * 1000 + i, deadline))
    except ExceptionGroup as eg:
        raise eg.exceptions[0] from None
    traffic.gate.set()
    duration_s = time.monotonic() - traffic.t0

    crashed = [k for k in KINDS if not fleet.alive(k)]  # died without being killed
    for k in crashed:
        await fleet.start(k)
    await _serving(traffic, probe, fleet)
    topups_unknown = await traffic.settle_topups(consumers)
    books = await _settled(conn, traffic)
    verify_ok, verify_out = await _verify(fleet)
    lat = [a.latency_ms for a in traffic.answers]
    p50, p99 = p50_p99_ms(lat)
    sched_kills = [e.at_s for e in chaos.events if e.kind == "scheduler"]
    near = sum(1 for a in traffic.answers if a.job_id in books["lost"]
               and any(0 <= k - a.at_s <= NEAR_KILL_S for k in sched_kills))
    return {
        "answered": len(traffic.answers), "billed": books["billed"], "lost_usage": len(books["lost"]),
        "lost_usage_near_scheduler_kill": near, "overspend_micros": await _overspend(
            conn, consumers + [probe]), "verify_ok": verify_ok, "p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
        "kills": dict(fleet.kills), "duration_s": round(duration_s, 1), "setup_s": round(setup_s, 1),
        "unsettled": books["unsettled"], "settled_records": books["records"],
        "topup_unknown": topups_unknown, "duplicate_job_ids": books["duplicate_job_ids"], "crashed": crashed, "recovery_s": recovery,
        "outcomes": dict(sorted(traffic.outcomes.items())), "seed": opts.seed,
        "kill_times_s": [(e.kind, round(e.at_s, 2)) for e in chaos.events],
        "lost_job_ids": sorted(str(j) for j in books["lost"])[:20],
        "verify": verify_out.strip().splitlines()[-1:] if verify_out else [], "home": str(fleet.home),
    }


async def _admin_key(db_url: str) -> str:
    from idlegrid.common import db
    from idlegrid.gateway.keys import create_key

    pool = await db.create_pool(db_url, max_size=1)
    try:
        return (await create_key(pool, scope="admin"))[1]
    finally:
        await pool.close()


async def _setup(url: str, admin_key: str, n: int, token_file: Path) -> list[Consumer]:
    """A provider (its token in ``token_file``) and ``n`` topped-up consumers with keys."""
    h = {"authorization": f"Bearer {admin_key}"}
    async with aiohttp.ClientSession(url, headers=h) as s:
        async def post(path: str, body: dict) -> dict:
            async with s.post(path, json=body) as r:
                if r.status not in (200, 201):
                    raise RuntimeError(f"POST {path}: {r.status} {await r.text()}")
                return await r.json()

        prov = await post("/v1/admin/accounts", {"kind": "provider", "name": f"soak-provider-{uuid.uuid4().hex[:8]}"})
        await asyncio.to_thread(_write_secret, token_file, prov["provider_token"])
        out = []
        for i in range(n):
            acct = (await post("/v1/admin/accounts", {"kind": "consumer", "name": f"soak-{i}-{uuid.uuid4().hex[:8]}"}))
            key = (await post("/v1/admin/keys", {"account_id": acct["account_id"], "scope": "consumer"}))["key"]
            c = Consumer(acct["account_id"], key)
            status = await topup(s, admin_key, c.account, INITIAL_MICROS, f"soak-initial-{c.account}")
            if status != 200:
                raise RuntimeError(f"the initial top-up answered {status}")
            c.topped_up_micros = INITIAL_MICROS
            out.append(c)
        return out


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


async def _serving(traffic: Traffic, probe: Consumer, fleet: Fleet) -> None:
    """Waits until a tensor and a chat request both get answered through the
    gateway (their answers count like any other)."""
    deadline = time.monotonic() + SERVING_TIMEOUT_S
    async with aiohttp.ClientSession(traffic.url, timeout=aiohttp.ClientTimeout(total=30)) as s:
        for op in ("tensor", "chat"):
            while not await traffic.one(s, probe, op, random.Random(0)):
                dead = [k for k in KINDS if not fleet.alive(k)]
                if dead:
                    raise RuntimeError(f"{', '.join(dead)} exited; see {fleet.home}/*.log")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {op} answer {SERVING_TIMEOUT_S:g} s after a restart; see {fleet.home}")
                await asyncio.sleep(POLL_S)


async def _recorded(conn, jobs: list[uuid.UUID]) -> dict[uuid.UUID, tuple[int, int]]:
    rows = await conn.fetch("SELECT job_id, cost_micros, settlement FROM metering.usage_lines WHERE job_id = ANY($1::uuid[])",
                            jobs)
    return {r["job_id"]: (r["cost_micros"], r["settlement"]) for r in rows}


async def _quiesce(traffic: Traffic, conn) -> None:
    """No request in flight, and every answered job's usage recorded (bounded)."""
    deadline = time.monotonic() + QUIESCE_TIMEOUT_S
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(traffic.idle.wait(), QUIESCE_TIMEOUT_S)
    jobs = [a.job_id for a in traffic.answers]
    # Polls: the records are another process's rows.
    while len(await _recorded(conn, jobs)) < len(jobs) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)


async def _settled(conn, traffic: Traffic) -> dict:
    """Waits until every record is settled, every lease cleared and every
    clearing window on the ledger (bounded), then matches jobs to records."""
    jobs = [a.job_id for a in traffic.answers]
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        pending = await conn.fetchval("SELECT count(*) FROM metering.usage_lines WHERE settlement = $1", PENDING)
        pending += await conn.fetchval(
            "SELECT (SELECT count(*) FROM metering.leases WHERE state = ANY($1::smallint[]))"
            " + (SELECT count(*) FROM metering.clearing_windows WHERE state = $2)", LEASES_UNCLEARED, WINDOW_STORED)
        recs = await _recorded(conn, jobs)  # after the count: a record settled in between shows as settled
        pending = max(pending, sum(1 for _, st in recs.values() if st == PENDING))
        if (pending == 0 and len(recs) == len(jobs)) or time.monotonic() > deadline:
            break
        await asyncio.sleep(POLL_S * 5)
    return {
        "billed": sum(1 for cost, st in recs.values() if st == SETTLED and cost > 0),
        "lost": {j for j in jobs if j not in recs}, "unsettled": pending,
        "records": await conn.fetchval("SELECT count(*) FROM metering.usage_lines WHERE settlement = $1", SETTLED),
        "duplicate_job_ids": len(jobs) - len(set(jobs)),
    }


async def _overspend(conn, consumers: list[Consumer]) -> int:
    """Σ max(0, charged − topped up) over the consumers, plus any account
    past its debits-must-not-exceed-credits bound."""
    total = 0
    for c in consumers:
        charged = await conn.fetchval("SELECT debits_posted FROM ledger.accounts WHERE id = $1::uuid", c.account)
        total += max(0, (charged or 0) - c.topped_up_micros)
    total += await conn.fetchval(
        "SELECT coalesce(sum(debits_pending + debits_posted - credits_posted), 0) FROM ledger.accounts "
        "WHERE flags & 1 = 1 AND debits_pending + debits_posted > credits_posted")
    return int(total)


async def _verify(fleet: Fleet) -> tuple[bool, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "idlegrid.cli.main", "ledger", "verify", env={**os.environ, **fleet.env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), VERIFY_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False, "ledger verify timed out"
    return proc.returncode == 0, out.decode(errors="replace")
