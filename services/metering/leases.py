"""Credit leases, the rules: a lease's states and what a request must hold.

A scheduler replica takes a lease on a partner's credits (one ledger hold,
consumer -> escrow:jobs, id = lease_id, no expiry) and reserves its jobs
against it locally; every job reserved on it has its usage recorded here
with the lease's id. Metering records the lease BEFORE the ledger is asked
for the hold, so every hold the ledger grants is known here and cleared:

    OPENING ──▶ OPEN ──▶ CLOSED ──▶ CLEARED   (posted for its records' exact total)
       │          └──────────────▶ CLEARED   (its scheduler crashed: never closed)
       ├──▶ REFUSED                         (the ledger held nothing)
       └──▶ VOIDED / CLEARED                 (stuck OPENING: clearing settles it)

A lease takes usage records while OPEN or CLOSED (a record retried after the
close). The database holds the same states (migrations/004_leases.sql).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import IntEnum

from asyncpg.pgproto import pgproto

from idlegrid.common.errors import InvalidArgument
from idlegrid.common.money import AMOUNT_MAX

MAX_JOB_S_MAX = 600  # the longest job timeout
USE_FOR_MAX = timedelta(hours=1)  # a lease's use_until at most this far ahead when opened
JOBS_MAX = 10**12


class LeaseState(IntEnum):
    """The column ``metering.leases.state``."""

    OPENING = 1
    OPEN = 2
    CLOSED = 3
    CLEARED = 4
    REFUSED = 5
    VOIDED = 6


ALLOWED: dict[LeaseState, frozenset[LeaseState]] = {
    LeaseState.OPENING: frozenset({LeaseState.OPEN, LeaseState.REFUSED, LeaseState.VOIDED, LeaseState.CLEARED}),
    LeaseState.OPEN: frozenset({LeaseState.CLOSED, LeaseState.CLEARED, LeaseState.VOIDED}),
    LeaseState.CLOSED: frozenset({LeaseState.CLEARED, LeaseState.VOIDED}),
    LeaseState.CLEARED: frozenset(),
    LeaseState.REFUSED: frozenset(),
    LeaseState.VOIDED: frozenset(),
}
TAKES_RECORDS = frozenset({LeaseState.OPEN, LeaseState.CLOSED})


class IllegalTransition(AssertionError):
    """A lease change the machine does not allow: a bug, never user input."""


def check(src: LeaseState, dst: LeaseState) -> None:
    if dst not in ALLOWED[src]:
        raise IllegalTransition(f"lease {src.name} → {dst.name} is not allowed")


def _id(b: bytes, what: str):
    if len(b) != 16 or b == bytes(16):
        raise InvalidArgument(f"{what} must be 16 non-zero bytes")
    return pgproto.UUID(b)


def validate_open(r) -> dict:
    """The lease row to record for an OpenLeaseRequest; InvalidArgument on bad input."""
    if not 1 <= r.amount_min <= r.amount_max <= AMOUNT_MAX:
        raise InvalidArgument(f"amounts must satisfy 1 <= amount_min <= amount_max <= {AMOUNT_MAX}")
    if not 1 <= r.max_job_s <= MAX_JOB_S_MAX:
        raise InvalidArgument(f"max_job_s must be in [1, {MAX_JOB_S_MAX}]")
    if not r.HasField("use_until"):
        raise InvalidArgument("use_until is required")
    use_until = r.use_until.ToDatetime(tzinfo=UTC)
    return {
        "lease_id": _id(r.lease_id, "lease_id"),
        "consumer_account_id": _id(r.consumer_account_id, "consumer_account_id"),
        "replica_id": _id(r.replica_id, "replica_id"),
        "amount_min": r.amount_min, "amount_max": r.amount_max, "use_until": use_until, "max_job_s": r.max_job_s,
    }


def check_new(values: dict, now: datetime) -> None:
    """What only a new lease must hold (a retry may come after use_until)."""
    if not now < values["use_until"] <= now + USE_FOR_MAX:
        raise InvalidArgument(f"use_until must be in the future, at most {USE_FOR_MAX} ahead")


def same(row, values: dict) -> bool:
    """Whether a stored lease is the one ``values`` asks for."""
    return all((row[k].bytes if hasattr(row[k], "bytes") else row[k])
               == (v.bytes if hasattr(v, "bytes") else v) for k, v in values.items())


def validate_close(r) -> tuple:
    if r.jobs > JOBS_MAX:
        raise InvalidArgument("jobs is out of range")
    return _id(r.lease_id, "lease_id"), r.jobs
