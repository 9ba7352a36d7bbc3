"""Credit leases, the pure part: one scheduler replica's leases on partners'
credits and the jobs reserved against them, with no I/O.

A lease is one durable ledger hold (consumer → escrow:jobs) that this
replica took for a partner. Each job reserves its maximum cost against the
partner's current lease here, in memory, in one step (no await between the
check and the take), so no job waits for the ledger:

    free(lease) = amount - reserved - ceil(spent_picos / 10^6)

where ``reserved`` is the sum of the maximum costs (micro-credits) of the
jobs in flight on it and ``spent_picos`` the exact costs (pico-credits) of
the jobs that ended. Clearing later posts the hold for exactly
ceil(spent_picos / 10^6) and releases the rest; since every job's exact
cost is at most its reservation, that never exceeds ``amount``. So no
partner spends more than the holds the ledger granted, across any number of
replicas: the ledger never grants holds beyond the balance.

A lease takes jobs until ``use_until`` (a window), then closes; a closing
lease takes no new jobs and is handed to clearing once its last job ended
(its usage durable). A replica renews a partner's lease before it runs low.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from idlegrid.common.clearing import PICOS_PER_MICRO, micros_ceil

LOW_WATER_SHARE = 0.25  # renew once less than this share of a lease is free


@dataclass(slots=True)
class Lease:
    lease_id: bytes
    consumer: bytes
    amount: int  # micro-credits the ledger holds for it
    use_until: float  # monotonic seconds: no new jobs after this
    reserved: int = 0  # micro-credits: the maximum costs of the jobs in flight
    spent_picos: int = 0  # exact costs of the jobs that ended
    in_flight: int = 0
    jobs: int = 0  # every job ever reserved on it
    closing: bool = False

    @property
    def free(self) -> int:
        return self.amount - self.reserved - micros_ceil(self.spent_picos)

    def open_at(self, now: float) -> bool:
        return not self.closing and now < self.use_until

    @property
    def done(self) -> bool:
        """Closing with no job in flight: ready for clearing."""
        return self.closing and self.in_flight == 0


@dataclass(frozen=True, slots=True)
class Reservation:
    lease: Lease
    micros: int  # the job's maximum cost


@dataclass(slots=True)
class LeaseBook:
    """One replica's leases, by consumer. Not thread-safe: one event loop."""

    current: dict[bytes, Lease] = field(default_factory=dict)
    closing: dict[bytes, Lease] = field(default_factory=dict)  # by lease id

    def reserve(self, consumer: bytes, micros: int, now: float) -> Reservation | None:
        """Takes ``micros`` from the consumer's current lease, or None when it
        has no open lease with that much free (then: renew, or refuse)."""
        if micros <= 0:
            raise ValueError("a reservation is at least 1 micro-credit")
        lease = self.current.get(consumer)
        if lease is None or not lease.open_at(now) or lease.free < micros:
            return None
        lease.reserved += micros
        lease.in_flight += 1
        lease.jobs += 1
        return Reservation(lease, micros)

    def finish(self, r: Reservation, cost_picos: int) -> None:
        """A job ended, costing exactly ``cost_picos`` (0 when nothing was
        delivered); its reservation returns to the lease."""
        if not 0 <= cost_picos <= r.micros * PICOS_PER_MICRO:
            raise ValueError(f"a job's cost {cost_picos} pico-credits is outside its reservation of {r.micros} µcr")
        lease = r.lease
        lease.reserved -= r.micros
        lease.spent_picos += cost_picos
        lease.in_flight -= 1

    def install(self, lease: Lease) -> Lease | None:
        """Makes ``lease`` the consumer's current one; the one it replaces (if
        any) starts closing and is returned."""
        old = self.current.get(lease.consumer)
        self.current[lease.consumer] = lease
        if old is not None:
            self._close(old)
        return old

    def close_expired(self, now: float) -> list[Lease]:
        """Starts closing every current lease past its window."""
        out = [lease for lease in self.current.values() if not lease.open_at(now)]
        for lease in out:
            del self.current[lease.consumer]
            self._close(lease)
        return out

    def close(self, consumer: bytes) -> Lease | None:
        """Starts closing the consumer's current lease (idle, or its credits are
        needed elsewhere)."""
        lease = self.current.pop(consumer, None)
        if lease is not None:
            self._close(lease)
        return lease

    def _close(self, lease: Lease) -> None:
        lease.closing = True
        self.closing[lease.lease_id] = lease

    def take_done(self) -> list[Lease]:
        """The closing leases whose last job ended: hand them to clearing."""
        done = [lease for lease in self.closing.values() if lease.done]
        for lease in done:
            del self.closing[lease.lease_id]
        return done

    def wants_renewal(self, consumer: bytes, now: float, *, margin_s: float) -> bool:
        """The consumer's lease is missing, low, or near the end of its window."""
        lease = self.current.get(consumer)
        return (lease is None or not lease.open_at(now + margin_s)
                or lease.free < lease.amount * LOW_WATER_SHARE)

    def held(self, consumer: bytes) -> int:
        """Micro-credits this replica's leases hold for the consumer (current and closing)."""
        total = sum(lease.amount for lease in self.closing.values() if lease.consumer == consumer)
        lease = self.current.get(consumer)
        return total + (lease.amount if lease is not None else 0)


__all__ = ["PICOS_PER_MICRO", "Lease", "LeaseBook", "Reservation", "micros_ceil"]
