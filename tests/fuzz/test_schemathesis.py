"""Schemathesis against the gateway's own OpenAPI document (GET
/openapi.json), on loopback, once per kind of caller: no key, and a valid
consumer, provider and admin key. Every operation is generated from the
document (examples, coverage of each constraint's edges, random fuzzing) and
the stateful phase follows the document's links: create an account, then a
key for it, use the key, revoke it; top it up, read it back.

Pins down: no answer is a 5xx (but the 503 an inference gets with no node,
declared), and every answer has a status, content type, headers and body its
operation documents; data the document forbids is refused with a 4xx.

Bounded: ``FUZZ_EXAMPLES`` examples per operation (default 5, fixed seed);
``make fuzz`` runs many more."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

CONFIG = Path(__file__).with_name("schemathesis.toml")
ST = Path(sys.executable).with_name("st")
SEED = int(os.environ.get("FUZZ_SEED", "20261129"))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))
RUN_TIMEOUT_S = float(os.environ.get("FUZZ_TIMEOUT_S", "600"))  # a bound on a hung run, never a threshold
# Every check but these: positive_data_acceptance wants 2xx for any valid
# shape, but most valid shapes name accounts, keys or models that do not
# exist (404), or need what another scope holds (403); object_level_authorization needs two keys in one run
# (tests/gateway pins ownership down).
EXCLUDED = ("positive_data_acceptance", "object_level_authorization")
OUTPUT_TAIL_CHARS = 20_000


async def _schemathesis(url: str, key: str | None, report_dir: Path) -> tuple[int, str]:
    args = [str(ST), "--config-file", str(CONFIG), "--no-color", "run", f"{url}/openapi.json",
            "--seed", str(SEED), "--max-examples", str(EXAMPLES), "--workers", "1",
            "--checks", "all", "--exclude-checks", ",".join(EXCLUDED), "--continue-on-failure",
            "--request-timeout", "30", "--report", "junit", "--report-dir", str(report_dir)]
    if key is not None:
        args += ["--header", f"Authorization: Bearer {key}"]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    (report_dir / "schemathesis.txt").write_text(text)  # beside the JUnit report, for a look after the run
    return proc.returncode or 0, text


SCOPES = ("none", "consumer", "provider", "admin")
AT_ONCE = 2  # runs side by side: each is one process, and the gateway waits on it between requests


@pytest.fixture(scope="module")
async def runs(target, tmp_path_factory):
    """Every scope's run, started together for the module, AT_ONCE at a time;
    the admin's last, alone: its stateful phase may change what the other
    keys see."""
    slots = asyncio.Semaphore(AT_ONCE)

    async def run(scope: str, after: list[asyncio.Task] = ()) -> tuple[int, str]:
        await asyncio.gather(*after, return_exceptions=True)
        async with slots:
            return await _schemathesis(target.url, target.keys[scope], tmp_path_factory.mktemp(f"fuzz-{scope}"))

    tasks = {scope: asyncio.create_task(run(scope)) for scope in SCOPES[:-1]}
    tasks["admin"] = asyncio.create_task(run("admin", list(tasks.values())))
    yield tasks
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


@pytest.mark.parametrize("scope", SCOPES)
async def test_every_operation_answers_as_documented(runs, scope):
    """With ``scope``'s key (or none), no operation answers 5xx or breaks its schema."""
    rc, out = await runs[scope]
    assert rc == 0, f"schemathesis ({scope} key) found problems:\n{out[-OUTPUT_TAIL_CHARS:]}"
