"""Credit leases, the driver: one per scheduler replica, around the pure
LeaseBook (lease_book.py), talking to metering.

    reserve(consumer, hold) ─▶ the consumer's open lease has ``hold`` free: taken
      (in memory, no await between the check and the take)
    otherwise ─▶ open a new lease (metering.OpenLease, one call in flight per
      consumer): amount_min = hold, amount_max = from the consumer's recent
      reservations (RECENT_WINDOWS windows), at least hold, at most LEASE_MAX
    refused ─▶ credits this replica's own leases hold unreserved and the
      ledger's available cover the job: close our lease now (clearing returns
      its rest) and retry; other replicas' leases could cover it: wait (at most
      WAIT_WINDOWS windows) and retry; else InsufficientFunds (402)

A lease takes jobs for one window (``window_s``), then closes; a closing
lease whose last job ended (its usage durable) is handed to
metering.CloseLease, which clears it. The background tick closes leases past
their window and hands the finished ones over; a lease that runs low is
renewed ahead of the next job. A partner with a small balance gets exact
answers: a job is refused only when the ledger's available credits plus
every lease's unreserved part cannot cover it (after the bounded wait).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict, deque

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.common.errors import InsufficientFunds, NotFound, Unavailable, from_rpc_error
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.scheduler.lease_book import Lease, LeaseBook, Reservation, micros_ceil

log = structlog.get_logger("scheduler.leases")

WINDOW_S = 2.0  # a lease takes jobs for this long
LEASE_MAX = 100_000_000  # micro-credits: the most one lease holds (100 credits)
RECENT_WINDOWS = 3  # a lease is sized from the reservations of this many windows
RECENT_FACTOR = 2  # ... times this, to last its window with room to grow
FIRST_LEASE_JOBS = 16  # a consumer with no recent spend: room for this many jobs like the first
WAIT_WINDOWS = 2  # how long a job waits for other leases to clear before 402
RETRY_S = 0.05  # between OpenLease tries while waiting (doubled, at most a window)
MAX_JOB_S = 600  # the longest a job may run (metering clears a crashed replica's lease after it)
METERING_TIMEOUT_S = 10.0
CLOSE_TRIES_DELAY_S = 0.2


class Leases:
    def __init__(self, metering, *, replica_id: bytes | None = None, window_s: float = WINDOW_S,
                 lease_max: int = LEASE_MAX, max_job_s: int = MAX_JOB_S, clock=time.monotonic) -> None:
        """``metering``: the MeteringServiceStub carrying the scheduler's token."""
        self._metering = metering
        self.replica_id = replica_id or os.urandom(16)
        self.window_s = window_s
        self.lease_max = lease_max
        self.max_job_s = max_job_s  # no job reserved here runs longer (metering clears a lost lease after it)
        self._clock = clock
        self.book = LeaseBook()
        self._opening: dict[bytes, asyncio.Future] = {}  # consumer -> the OpenLease in flight
        self._recent: dict[bytes, deque[list[float | int]]] = defaultdict(lambda: deque(maxlen=RECENT_WINDOWS))
        self._recorded: dict[bytes, int] = defaultdict(int)  # lease id -> jobs whose usage is durable
        self._refused_at: dict[bytes, float] = {}  # consumer -> when an OpenLease was last refused
        self._tasks: set[asyncio.Task] = set()
        self._ticker: asyncio.Task | None = None
        self.opened = 0  # leases opened (figures)

    # ------------------------------------------------------------ the job path

    async def reserve(self, consumer: bytes, micros: int, *, deadline: float) -> Reservation:
        """Reserves a job's maximum cost (``micros``) on the consumer's lease;
        raises InsufficientFunds (402) when the partner cannot afford it, or
        NotFound for an unknown account. ``deadline``: monotonic seconds."""
        waited_until = None
        delay = RETRY_S
        while True:
            now = self._clock()
            r = self.book.reserve(consumer, micros, now)
            if r is not None:
                self._note(consumer, micros, now)
                if self.book.wants_renewal(consumer, now, margin_s=self.window_s / 4):
                    self._renew_soon(consumer, micros)
                return r
            refusal = await self._open(consumer, micros)
            if refusal is None:
                continue  # a lease was installed: take from it (another job may have been first)
            available, held_elsewhere = refusal
            own_free, own_held = self._own(consumer)
            others = max(0, held_elsewhere - own_held)
            if available + own_free < micros and available + own_free + others < micros:
                raise InsufficientFunds(f"not enough credits: this job may cost up to {micros} micro-credits")
            if own_free and available + own_free >= micros:
                self._close_now(consumer)  # our own lease holds them: release its rest promptly
            now = self._clock()
            if waited_until is None:
                waited_until = min(deadline, now + WAIT_WINDOWS * self.window_s + 1.0)
            if now >= waited_until:
                raise InsufficientFunds(f"not enough credits: this job may cost up to {micros} micro-credits; "
                                        "other requests hold the rest")
            await asyncio.sleep(min(delay, max(0.0, waited_until - now)))
            delay = min(delay * 2, self.window_s / 2)

    def finish(self, r: Reservation, cost_picos: int, *, recorded: bool) -> None:
        """A job ended: its usage is durable (``recorded``) or given up; its
        reservation returns to the lease and its exact cost is spent."""
        self.book.finish(r, cost_picos)
        if recorded:
            self._recorded[r.lease.lease_id] += 1
        if r.lease.done:
            self._hand_over()

    # ------------------------------------------------------------ opening

    async def _open(self, consumer: bytes, micros: int) -> tuple[int, int] | None:
        """Opens a lease (single flight per consumer); None when one was
        installed, else (available, held_elsewhere) from the refusal."""
        flight = self._opening.get(consumer)
        if flight is None:
            flight = asyncio.get_running_loop().create_future()
            self._opening[consumer] = flight
            task = asyncio.create_task(self._open_lease(consumer, micros, flight))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        result = await asyncio.shield(flight)
        if isinstance(result, BaseException):
            raise result
        if result is None:
            return None
        # A refusal for a smaller job says nothing about a bigger one, and the reverse: judge with its figures.
        return result

    async def _open_lease(self, consumer: bytes, micros: int, flight: asyncio.Future) -> None:
        try:
            result = await self._call_open(consumer, micros)
        except BaseException as e:  # noqa: BLE001 -- handed to every waiter
            result = e
        finally:
            self._opening.pop(consumer, None)
        if not flight.done():
            flight.set_result(result)

    async def _call_open(self, consumer: bytes, micros: int) -> tuple[int, int] | None:
        lease_id = os.urandom(16)
        # The local window starts first, so it ends no later than the use_until metering keeps.
        started = self._clock()
        until_wall = Timestamp()
        until_wall.FromNanoseconds(time.time_ns() + int(self.window_s * 1e9))
        recent = self._recent_spend(consumer)
        amount_max = max(micros, min(self.lease_max, recent * RECENT_FACTOR if recent else micros * FIRST_LEASE_JOBS))
        try:
            r = await self._metering.OpenLease(mpb.OpenLeaseRequest(
                lease_id=lease_id, consumer_account_id=consumer, amount_min=micros, amount_max=amount_max,
                use_until=until_wall, max_job_s=self.max_job_s, replica_id=self.replica_id), timeout=METERING_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            err = from_rpc_error(e)
            if isinstance(err, NotFound):
                raise NotFound("unknown consumer account", reason="account_not_found") from None
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable("credits cannot be reserved now (metering unavailable); nothing was charged",
                                  reason="leases_unavailable") from None
            raise err from None
        if r.insufficient_funds or r.amount == 0:
            self._refused_at[consumer] = self._clock()
            return r.available, r.held_elsewhere
        self.opened += 1
        lease = Lease(lease_id=lease_id, consumer=consumer, amount=r.amount, use_until=started + self.window_s)
        self.book.install(lease)
        self._hand_over()
        return None

    def _renew_soon(self, consumer: bytes, micros: int) -> None:
        """Opens the next lease ahead of the job that would find this one short."""
        if consumer in self._opening or self._clock() - self._refused_at.get(consumer, -1e9) < self.window_s / 4:
            return  # one open at a time; after a refusal, no renewal for a while (the next job opens if it must)
        flight = asyncio.get_running_loop().create_future()
        self._opening[consumer] = flight
        task = asyncio.create_task(self._open_lease(consumer, micros, flight))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        flight.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)

    def _note(self, consumer: bytes, micros: int, now: float) -> None:
        """Counts a reservation in the consumer's current window of spend."""
        windows = self._recent[consumer]
        if not windows or now - windows[-1][0] >= self.window_s:
            windows.append([now, 0])
        windows[-1][1] += micros

    def _recent_spend(self, consumer: bytes) -> int:
        windows = self._recent.get(consumer)
        return int(max((w[1] for w in windows), default=0)) if windows else 0

    def _own(self, consumer: bytes) -> tuple[int, int]:
        """(unreserved micro-credits, micro-credits held) of this replica's
        leases for the consumer, current and closing."""
        leases = [x for x in self.book.closing.values() if x.consumer == consumer]
        cur = self.book.current.get(consumer)
        if cur is not None:
            leases.append(cur)
        return sum(max(0, x.free) for x in leases), sum(x.amount for x in leases)

    # ------------------------------------------------------------ closing

    def _close_now(self, consumer: bytes) -> None:
        self.book.close(consumer)
        self._hand_over()

    def _hand_over(self) -> None:
        for lease in self.book.take_done():
            task = asyncio.get_running_loop().create_task(self._close_lease(lease))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _close_lease(self, lease: Lease) -> None:
        """metering.CloseLease, retried: idempotent. Given up, metering clears
        the lease on its own after use_until + MAX_JOB_S."""
        jobs = self._recorded.pop(lease.lease_id, 0)
        delay = CLOSE_TRIES_DELAY_S
        for _ in range(8):
            try:
                await self._metering.CloseLease(mpb.CloseLeaseRequest(lease_id=lease.lease_id, jobs=jobs),
                                                timeout=METERING_TIMEOUT_S)
                return
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    log.error("lease.close_failed", lease_id=lease.lease_id.hex(), code=e.code().name,
                              details=e.details())
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        log.error("lease.close_gave_up", lease_id=lease.lease_id.hex())

    def tick(self) -> None:
        """Closes leases past their window; hands finished ones to clearing."""
        self.book.close_expired(self._clock())
        self._hand_over()

    async def _run_ticks(self) -> None:
        while True:
            await asyncio.sleep(self.window_s / 8)
            self.tick()

    def start(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._run_ticks())

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Closes every lease (call once the jobs drained) and waits for the hand-overs."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        for consumer in list(self.book.current):
            self.book.close(consumer)
        self._hand_over()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    def unreserved(self, consumer: bytes) -> int:
        """Micro-credits the consumer's leases here hold that no job reserved (tests)."""
        return self._own(consumer)[0]

    def reserved(self, consumer: bytes) -> int:
        """Micro-credits reserved by the consumer's jobs in flight here (tests)."""
        leases = [x for x in self.book.closing.values() if x.consumer == consumer]
        if (cur := self.book.current.get(consumer)) is not None:
            leases.append(cur)
        return sum(x.reserved for x in leases)


__all__ = ["LEASE_MAX", "WINDOW_S", "Leases", "Reservation", "micros_ceil"]
