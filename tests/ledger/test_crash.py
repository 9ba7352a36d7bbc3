"""Crash safety: the ledger runs as its own process (``idlegrid ledger
serve``) under load from 64 concurrent clients sending batches with known
ids; it is killed with SIGKILL mid-load and restarted, and every request whose
answer never arrived is retried with the same ids. Each transfer must then be
applied exactly once, the balances must equal the sums, and verify passes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess

import asyncpg
import grpc
import pytest

from idlegrid.bench.kit import free_port, spawn, wait_healthy
from idlegrid.common.channel import open_channel
from idlegrid.ledger.v1 import ledger_pb2 as pb
from idlegrid.ledger.v1 import ledger_pb2_grpc
from tests.harness import TOKEN, eventually
from tests.ledger.support import (
    LINKED,
    account,
    balances,
    create,
    create_accounts,
    row_counts,
    run_verify,
    transfer,
)

CLIENTS = 64
REQUESTS_PER_CLIENT = 8
ITEMS_PER_REQUEST = 20  # a linked chain of 3 and 17 plain transfers
KILL_AFTER_ACKS = CLIENTS * REQUESTS_PER_CLIENT // 3
RPC_TIMEOUT_S = 60
KILL_WAIT_S = 2.0  # a bound on looking for the moment to kill, never a threshold


class LedgerProcess:
    """``idlegrid ledger serve`` as a child process on the module's database."""

    def __init__(self, db_url: str, home, log_path) -> None:
        self.db_url, self.home, self.log_path = db_url, home, log_path
        self.proc: subprocess.Popen | None = None
        self.addr = ""

    async def start(self) -> None:
        port = free_port()
        self.addr = f"127.0.0.1:{port}"
        self.proc = spawn(["ledger", "serve"], env={
            "IDLEGRID_DATABASE_URL": self.db_url, "IDLEGRID_LEDGER_PORT": str(port),
            "IDLEGRID_SERVICE_TOKEN": TOKEN, "IDLEGRID_HOME": str(self.home),
            "IDLEGRID_LOG_FORMAT": "json", "IDLEGRID_LOG_LEVEL": "warning",
        }, log_path=self.log_path)
        await wait_healthy(self.addr, timeout_s=60, proc=self.proc)

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "the ledger died on its own"
        os.kill(self.proc.pid, signal.SIGKILL)  # also ends a SIGSTOP
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
async def ledger_process(db_url, tmp_path):
    lp = LedgerProcess(db_url, tmp_path / "home", tmp_path / "ledger.log")
    yield lp
    lp.stop()


def _requests(source: bytes, sinks: list[bytes]) -> list[list[pb.Transfer]]:
    """Every request of the load, with fixed ids and amounts."""
    out = []
    n = 0
    for _ in range(CLIENTS * REQUESTS_PER_CLIENT):
        req = []
        for i in range(ITEMS_PER_REQUEST):
            n += 1
            req.append(transfer(source, sinks[n % len(sinks)], 1 + n % 97, flags=LINKED if i < 2 else 0))
        out.append(req)
    return out


async def test_sigkill_under_load_then_retry_applies_every_transfer_exactly_once(ledger_process, db_url):
    """Requests answered before the kill were applied; each one not answered
    answers all OK (lost) or all EXISTS (committed, answer lost) on retry;
    afterwards every id is stored once, the balances are the sums, verify passes."""
    lp = ledger_process
    await lp.start()
    source = account()
    sinks = [account() for _ in range(16)]
    requests = _requests(source.id, [s.id for s in sinks])
    per_client = [requests[i::CLIENTS] for i in range(CLIENTS)]
    acked: dict[int, list[int]] = {}  # request index -> results, for answers received
    killed = asyncio.Event()
    enough = asyncio.Event()  # a third of the requests answered

    async with open_channel(lp.addr, token=TOKEN) as ch:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        await create_accounts(stub, source, *sinks)
        index = {id(r): i for i, r in enumerate(requests)}

        async def client(mine: list[list[pb.Transfer]]) -> None:
            for req in mine:
                if killed.is_set():
                    return
                try:
                    r = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=req), timeout=RPC_TIMEOUT_S)
                except grpc.aio.AioRpcError as e:
                    # the only acceptable failure: the process is gone
                    assert killed.is_set(), f"{e.code()}: {e.details()}"
                    return
                acked[index[id(req)]] = list(r.results)
                if len(acked) >= KILL_AFTER_ACKS:
                    enough.set()

        async def killer() -> None:
            """Once a third of the requests are answered, freezes the process
            (SIGSTOP) and looks at the database: when it holds more transfers
            than were acknowledged (a batch committed whose answer has not
            arrived), kills it there (SIGKILL); else lets it run on (SIGCONT)
            and looks again. After KILL_WAIT_S without that moment, kills it anyway."""
            await enough.wait()
            conn = await asyncpg.connect(db_url)

            async def frozen_after_an_unanswered_commit() -> bool:
                os.kill(lp.proc.pid, signal.SIGSTOP)
                committed = await conn.fetchval("SELECT count(*) FROM ledger.transfers")
                if committed > len(acked) * ITEMS_PER_REQUEST:
                    return True
                os.kill(lp.proc.pid, signal.SIGCONT)
                return False

            try:
                with contextlib.suppress(AssertionError):  # the moment did not come: kill anyway
                    await eventually(frozen_after_an_unanswered_commit, what="an unanswered commit",
                                     timeout_s=KILL_WAIT_S, every_s=0.002)
            finally:
                await conn.close()
            killed.set()
            lp.kill()

        await asyncio.gather(killer(), *[client(m) for m in per_client])
    assert killed.is_set(), "the load finished before the kill"
    unacked = [i for i in range(len(requests)) if i not in acked]
    assert unacked, "every request was answered before the kill"
    for i, results in acked.items():
        assert results == [pb.CREATE_TRANSFER_RESULT_OK] * ITEMS_PER_REQUEST, i

    await lp.start()  # the same database, a new process
    async with open_channel(lp.addr, token=TOKEN) as ch:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        retried = await asyncio.gather(*[
            stub.CreateTransfers(pb.CreateTransfersRequest(transfers=requests[i]), timeout=RPC_TIMEOUT_S)
            for i in unacked])
        outcomes = {"OK": 0, "EXISTS": 0}
        for i, r in zip(unacked, retried, strict=True):
            res = list(r.results)
            # a request committed before the kill answers EXISTS for every item; one that was
            # lost answers OK for every item; never a mix (a batch commits whole)
            assert res in ([pb.CREATE_TRANSFER_RESULT_OK] * ITEMS_PER_REQUEST,
                           [pb.CREATE_TRANSFER_RESULT_EXISTS] * ITEMS_PER_REQUEST), (i, res)
            outcomes["OK" if res[0] == pb.CREATE_TRANSFER_RESULT_OK else "EXISTS"] += 1
        # acknowledged requests sent again change nothing
        sample = sorted(acked)[:: max(1, len(acked) // 20)]
        for i in sample:
            assert await create(stub, *requests[i]) == ["EXISTS"] * ITEMS_PER_REQUEST

        all_ids = [t.id for req in requests for t in req]
        found = []
        for k in range(0, len(all_ids), 8000):
            r = await stub.LookupTransfers(pb.LookupTransfersRequest(ids=all_ids[k:k + 8000]))
            found.extend(t.id for t in r.transfers)
        assert sorted(found) == sorted(all_ids)  # each exactly once
        assert (await row_counts(db_url))["transfers"] == len(all_ids)

        expected = {s.id: 0 for s in sinks}
        for req in requests:
            for t in req:
                expected[t.credit_account_id] += t.amount
        got = await balances(stub, source.id, *[s.id for s in sinks])
        assert got[0] == (0, sum(expected.values()), 0, 0)
        assert got[1:] == [(0, 0, 0, expected[s.id]) for s in sinks]
    rep = await run_verify(db_url)
    assert rep.ok, rep.problems
    assert sum(outcomes.values()) == len(unacked)
